"""Choose, per task, image-wide or patch-sized grid attention for a saved model (see
``instruct_ipt.eval.grid_span``) and optionally record the choice in its ``config.json``.

Whole photos of a selection folder are degraded once per task (seeded as in ``instruct-ipt
eval``, but with ``--seed``), restored both ways and scored with the task's protocol. Use
photos you do not report results on. The shipped model's choice was made by

    python scripts/choose_grid_spans.py --model runs/default-extend-7/model \
        --photos ../shared/photos/train --limit 3 --span 64 --write

(``runs/default-extend-7`` was the last of the eight CPU runs, see MODEL.md). A training config
can make the same choice as its last step instead: ``grid_spans`` in docs/training.md.

Only ``config.json`` is rewritten (atomically); the weights are not touched.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from instruct_ipt import InstructIPT
from instruct_ipt.eval.grid_span import apply_choices, compare_grid_spans
from instruct_ipt.eval.runner import Case, synthetic_cases
from instruct_ipt.io import atomic_write_text
from instruct_ipt.model import CONFIG_NAME


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="saved model folder")
    ap.add_argument("--photos", required=True, help="folder of clean selection photos")
    ap.add_argument("--limit", type=int, default=0, help="use this many photos, evenly spaced in name order (0: all)")
    ap.add_argument("--span", type=int, default=64, help="candidate span in input pixels: the training patch size")
    ap.add_argument("--sigma", type=float, default=25.0, help="denoise noise level (0-255)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--write", action="store_true", help="record the choice in the model's config.json")
    args = ap.parse_args()

    model = InstructIPT.from_pretrained(args.model)
    params = {"denoise": {"sigma": args.sigma}}
    cases = [c for c in synthetic_cases(args.photos, model.tasks, params, seed=args.seed, limit=args.limit) if isinstance(c, Case)]
    names = sorted({c.name for c in cases})
    print(f"{len(names)} photos: {', '.join(names)}", flush=True)
    choices = compare_grid_spans(model, cases, args.span)
    print(f"{'task':10s} {'image-wide':>10s} {f'span {args.span}':>10s}  choice")
    for c in choices:
        print(f"{c.task:10s} {c.psnr_image_wide:10.2f} {c.psnr_span:10.2f}  {'image-wide' if c.best is None else c.best}")
    if args.write:
        apply_choices(model, choices)
        path = Path(args.model) / CONFIG_NAME
        atomic_write_text(path, json.dumps(model.config_dict(), indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
