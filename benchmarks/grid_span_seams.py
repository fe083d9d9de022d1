"""Block seams of bounded grid attention, side by side with image-wide grid attention.

Restores a smooth 256x320 gradient (a sky, a wall: where seams show) with each task of a model,
once with grid groups bounded to ``--span`` pixel blocks and once image-wide, and prints per task
the seam ratio at that period (``instruct_ipt.eval.metrics.seam_ratio``: about 1 without seams) and
the PSNR against the gradient. Denoise gets sigma-10 noise; the other tasks get the clean gradient
(what a restored smooth area should stay).

    python benchmarks/grid_span_seams.py [--model default] [--span 64]
"""

from __future__ import annotations

import argparse

import numpy as np

from instruct_ipt import InstructIPT
from instruct_ipt.eval.metrics import psnr, seam_ratio
from instruct_ipt.inference import restore_array


def gradient() -> np.ndarray:
    yy, xx = np.mgrid[0:256, 0:320] / 256.0
    return np.stack([0.3 + 0.32 * xx, 0.2 + 0.5 * yy, 0.5 + 0.2 * np.sin(2 * xx + yy)], axis=2).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--span", type=int, default=64)
    args = ap.parse_args()
    model = InstructIPT.from_pretrained(args.model).eval()
    clean = gradient()
    noisy = clean + np.random.default_rng(0).normal(0, 10 / 255, clean.shape).astype(np.float32)
    print(f"{'task':8s} {'seam, span ' + str(args.span):>15s} {'seam, image-wide':>17s} {'PSNR span':>10s} {'PSNR wide':>10s}")
    for task in model.tasks:
        row = []
        for span in (args.span, None):
            with model.merged(task):
                out = restore_array(model, noisy if task == "denoise" else clean, None, tile=0, grid_span=span)
            out = np.clip(out, 0, 1)
            row.append((seam_ratio(out, clean, args.span), psnr(out, clean)))
        print(f"{task:8s} {row[0][0]:15.2f} {row[1][0]:17.2f} {row[0][1]:10.2f} {row[1][1]:10.2f}")


if __name__ == "__main__":
    main()
