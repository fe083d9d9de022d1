"""Before/after sheet of a model on validation photos: one row per task, degraded | restored | clean.

Each row degrades a centre crop of a photo with the task's synthetic degradation (seeded, as in
``instruct-ipt eval``), restores it with the named task and prints the PSNR of both. The README's
picture is made by

    python scripts/render_examples.py --photos ../shared/photos/val --out docs/examples.png

(the shipped default model; ``--model DIR`` for another).
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw

from instruct_ipt import RestorationPipeline
from instruct_ipt.data.degradations import degrade
from instruct_ipt.data.images import list_images, load_image
from instruct_ipt.eval.metrics import psnr
from instruct_ipt.io import atomic_write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="saved model folder (default: the shipped model)")
    ap.add_argument("--photos", required=True, help="folder of clean photos; row i uses photo i mod count")
    ap.add_argument("--out", default="docs/examples.png")
    ap.add_argument("--size", type=int, default=224, help="crop size in pixels")
    ap.add_argument("--sigma", type=float, default=25.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    pipe = RestorationPipeline.from_pretrained(args.model, device="cpu")
    photos = list_images(args.photos)
    s, label = args.size, 18
    sheet = Image.new("RGB", (3 * s, len(pipe.tasks) * (s + label)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, task in enumerate(pipe.tasks):
        img = load_image(photos[row % len(photos)]).rgb
        h, w = img.shape[:2]
        clean = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        kwargs = {"sigma": args.sigma} if task == "denoise" else {}
        degraded = degrade(clean, task, seed=args.seed, **kwargs).image
        degraded = np.round(np.clip(degraded, 0, 1) * 255) / 255  # what a user's 8-bit file holds
        restored = np.clip(pipe(degraded.astype(np.float32), task=task), 0, 1)
        before, after = psnr(degraded, clean), psnr(restored, clean)
        y = row * (s + label)
        for col, (name, im) in enumerate(
            [(f"{task}: input {before:.1f} dB", degraded), (f"restored {after:.1f} dB", restored), ("clean", clean)]
        ):
            sheet.paste(Image.fromarray((im * 255 + 0.5).astype(np.uint8)), (col * s, y + label))
            draw.text((col * s + 4, y + 3), name, fill="black")
        print(f"{task:<8} {photos[row % len(photos)].name}: input {before:.2f} dB -> restored {after:.2f} dB")
    atomic_write(args.out, lambda tmp: sheet.save(tmp, format="PNG", optimize=True))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
