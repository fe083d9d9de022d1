"""What a task costs on a photo that does not have its degradation: blind mode's wrong guesses.

Blind mode names tasks from what a classifier sees; on a photo it misreads (a bright, soft room
that looks hazy) the restoration runs a task whose degradation is not there. This prints, per task
and model, the PSNR (RGB, dB) of the task's output against the clean photo it was given - 'inf'
would be a task that leaves such a photo exactly alone - and, per model, what blind mode chose on
each clean photo and what that did. Several ``--model`` folders are measured side by side on the
same crops (e.g. a model trained with ``data.identity`` against one without):

    python benchmarks/wrong_task.py --photos ../shared/photos/val --crop 384 \
        --model default --model runs/identity/i0.2/model
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from instruct_ipt.data.images import list_images, read_rgb
from instruct_ipt.data.validation import center_crop
from instruct_ipt.eval.metrics import psnr
from instruct_ipt.pipeline import RestorationPipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", required=True, help="a folder of clean photos")
    ap.add_argument("--model", action="append", required=True, help="a model folder, or 'default' (repeatable)")
    ap.add_argument("--crop", type=int, default=384, help="centre crop side (0: whole photos)")
    ap.add_argument("--device", default="cpu", help="torch device of the models (default: cpu)")
    args = ap.parse_args()
    files = list_images(args.photos)
    if not files:
        raise SystemExit(f"{args.photos}: no images")
    photos = {f.stem: center_crop(read_rgb(f), args.crop) for f in files}
    t0 = time.perf_counter()
    table: dict[str, dict[str, list[float]]] = {}
    blind: dict[str, list[str]] = {}
    for name in args.model:
        pipe = RestorationPipeline.from_pretrained(None if name == "default" else name, device=args.device)
        table[name] = {t: [psnr(np.clip(pipe.run(img, [t]), 0, 1), img) for img in photos.values()] for t in pipe.tasks}
        blind[name] = []
        for stem, img in photos.items():
            tasks = pipe.choose(img).tasks
            out = pipe.run(img, tasks) if tasks else img
            blind[name].append(f"{stem}: {','.join(tasks) or 'nothing'} {psnr(np.clip(out, 0, 1), img):.2f}")
    size = f"centre crops of {args.crop} px" if args.crop else "whole"
    print(f"photos: {len(photos)} ({', '.join(photos)}), {size}")
    print("mean PSNR (RGB dB) of each task's output against the clean photo it was given; per photo in brackets")
    print("| task | " + " | ".join(args.model) + " |")
    print("| --- |" + " --- |" * len(args.model))
    tasks = list(dict.fromkeys(t for m in table.values() for t in m))
    for t in tasks:
        cells = []
        for name in args.model:
            v = table[name].get(t)
            cells.append("-" if v is None else f"{np.mean(v):.2f} ({', '.join(f'{x:.1f}' for x in v)})")
        print(f"| {t} | " + " | ".join(cells) + " |")
    print("| blind mode | " + " | ".join("; ".join(blind[n]) for n in args.model) + " |")
    print(f"wall {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
