"""Gather the default recipe's training and validation photos into one folder for a GPU machine.

``scripts/train_gpu.sh OUT PHOTOS`` reads ``PHOTOS/train`` and ``PHOTOS/val``. A GPU machine lacks
``../shared`` and may lack scikit-image, so this copies the shared photos and writes scikit-image's
four bundled colour photos into ``train/`` as PNGs: the same 25 training photos as the CPU recipe.

    python scripts/prepare_gpu_photos.py .gpu-photos          # then carry .gpu-photos (about 20 MB)
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image

from instruct_ipt.data.images import list_images
from instruct_ipt.train.trainer import SKIMAGE_PHOTOS

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "photos", help="folder with train/ and val/")
    args = ap.parse_args()
    from skimage import data

    for sub in ("train", "val"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
        for f in list_images(args.photos / sub):
            shutil.copy2(f, args.out / sub / f.name)
    for name in SKIMAGE_PHOTOS:
        Image.fromarray(getattr(data, name)()[..., :3]).save(args.out / "train" / f"skimage-{name}.png")
    for sub in ("train", "val"):
        print(f"{args.out / sub}: {len(list_images(args.out / sub))} photos")


if __name__ == "__main__":
    main()
