"""Render one example per degradation operator to docs/degradations.png (clean + each task).

    python scripts/render_degradations.py [--out docs/degradations.png] [--seed 3]
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw
from skimage import data

from instruct_ipt.data.degradations import DEGRADATIONS, Rain, degrade
from instruct_ipt.io import atomic_write


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/degradations.png")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    s = args.size
    clean = np.asarray(Image.fromarray(data.astronaut()).resize((s * 2, s * 2), Image.LANCZOS))[: s, s // 2 : s // 2 + s]
    clean = clean.astype(np.float32) / 255
    tiles = [("clean", clean)]
    for task in DEGRADATIONS:
        tiles.append((task, degrade(clean, task, seed=args.seed).image))
    rng = np.random.default_rng(args.seed)
    tiles.insert(4, ("derain (light)", Rain.light()(clean, rng).image))
    tiles.insert(5, ("derain (heavy)", Rain.heavy()(clean, rng).image))
    tiles = [(n, t) for n, t in tiles if n != "derain"]
    cols = 4
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * s, rows * (s + 18)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (name, img) in enumerate(tiles):
        x, y = (i % cols) * s, (i // cols) * (s + 18)
        sheet.paste(Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)), (x, y + 18))
        draw.text((x + 4, y + 3), name, fill="black")
    atomic_write(args.out, lambda tmp: sheet.save(tmp, format="PNG", optimize=True))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
