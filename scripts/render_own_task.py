"""The before/after picture of docs/own-task.md: dark input, the new task's output, the clean photo.

    python scripts/render_own_task.py --model runs/lowlight-model --pairs runs/lowlight/val \\
        --task lowlight --out docs/own-task.png

One row per pair (``--limit`` rows, default 2), each image scaled to ``--width`` pixels, with the
PSNR of the input and of the output against the clean photo written under them.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw

from instruct_ipt import RestorationPipeline
from instruct_ipt.data.images import read_rgb, save_image
from instruct_ipt.data.paired import detect_layout
from instruct_ipt.eval.metrics import psnr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--pairs", required=True, help="a folder of pairs (input/ + target/)")
    ap.add_argument("--task", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=2)
    ap.add_argument("--width", type=int, default=320)
    args = ap.parse_args()
    pipe = RestorationPipeline.from_pretrained(args.model)
    rows = []
    for pair in detect_layout(args.pairs).pairs[: args.limit]:
        dark, clean = read_rgb(pair.input), read_rgb(pair.target)
        out = np.round(np.clip(pipe.run(dark, [args.task]), 0, 1) * 255) / 255  # as saved and as eval measures
        cells = []
        for img, label in ((dark, f"input {psnr(dark, clean):.2f} dB"), (out, f"{args.task} {psnr(out, clean):.2f} dB"),
                           (clean, "clean photo")):
            pil = Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
            pil = pil.resize((args.width, round(pil.height * args.width / pil.width)), Image.LANCZOS)
            canvas = Image.new("RGB", (pil.width, pil.height + 20), "white")
            canvas.paste(pil, (0, 0))
            ImageDraw.Draw(canvas).text((4, pil.height + 4), label, fill="black")
            cells.append(np.asarray(canvas))
        rows.append(np.concatenate(cells, axis=1))
    width = max(r.shape[1] for r in rows)
    sheet = np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])
    save_image(args.out, sheet.astype(np.float32) / 255.0)
    print(f"wrote {args.out} ({sheet.shape[1]}x{sheet.shape[0]})")


if __name__ == "__main__":
    main()
