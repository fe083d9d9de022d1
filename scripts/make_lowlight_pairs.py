"""Make (dark, clean) training pairs from clean photos: the example task of docs/own-task.md.

Low light is a degradation none of the six shipped tasks covers. Each photo is darkened as an
under-exposed camera would record it: in linear light (sRGB decoded) scaled by an exposure
factor of 2^-EV with EV drawn in [1.5, 3.5], then shot and read noise added (Poisson-Gaussian,
stronger in relative terms in the darkest parts), encoded back to sRGB and rounded to 8 bits.
Draws are seeded by the file name and the variant number, so the pairs are the same on every run.

    python scripts/make_lowlight_pairs.py ../shared/photos/train runs/lowlight/train --variants 3
    python scripts/make_lowlight_pairs.py ../shared/photos/val runs/lowlight/val --variants 1

Writes OUT/input/<name>-<k>.png and OUT/target/<name>-<k>.png (the layout ``input/`` + ``target/``
that ``add-task --pairs`` and ``eval --data`` read). Existing files are not overwritten.
"""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from instruct_ipt.data.images import list_images, read_rgb, save_image


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def darken(clean: np.ndarray, rng: np.random.Generator, ev: tuple[float, float] = (1.5, 3.5),
           shot: float = 4e-4, read: float = 2e-3) -> np.ndarray:
    """``clean`` float (H, W, 3) sRGB in [0, 1] as an under-exposed shot of the same scene."""
    lin = srgb_to_linear(clean.astype(np.float64)) * 2.0 ** -rng.uniform(*ev)
    noisy = lin + rng.normal(size=lin.shape) * np.sqrt(shot * lin + read**2)
    return (np.round(linear_to_srgb(noisy) * 255) / 255).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photos", help="folder of clean photos")
    ap.add_argument("out", help="output folder (input/ and target/ are made inside)")
    ap.add_argument("--variants", type=int, default=1, help="dark versions per photo (default 1)")
    args = ap.parse_args()
    out = Path(args.out)
    (out / "input").mkdir(parents=True, exist_ok=True)
    (out / "target").mkdir(exist_ok=True)
    written = 0
    for path in list_images(args.photos):
        clean = read_rgb(path)
        for k in range(args.variants):
            name = f"{path.stem}-{k}.png"
            if (out / "input" / name).exists() and (out / "target" / name).exists():
                continue
            rng = np.random.default_rng((zlib.crc32(path.name.encode()), k))
            save_image(out / "input" / name, darken(clean, rng))
            save_image(out / "target" / name, clean)
            written += 1
    total = len(list_images(out / "input"))
    mean_in = np.mean([np.asarray(Image.open(p)).mean() for p in list_images(out / "input")])
    mean_tgt = np.mean([np.asarray(Image.open(p)).mean() for p in list_images(out / "target")])
    print(f"{written} new pairs, {total} in {out}; mean grey level {mean_in:.1f} (dark) vs {mean_tgt:.1f} (clean)")


if __name__ == "__main__":
    main()
