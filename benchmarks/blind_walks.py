"""Peeling threshold choices compared on unseen photos from one recorded walk, without restoring again.

    python benchmarks/blind_walks.py --val ../shared/photos/val --seeds 3 --walks runs/first-gate/val.npz \\
        --classifier packaged --classifier runs/first-gate/peel-first-d.safetensors

Takes the first two peeling steps (``peel_walks``: two restorations of the central crop, the slow
part) of every whole image that benchmarks/blind_accuracy.py makes from the same photos and seeds
- each single degradation, each composite, the clean photo - once, keeps them in ``--walks`` (a
later run with the same classifier weights, model, photos, seeds and cases reads them back), then
prints for each ``--classifier`` the images whose set its peeling names exactly
(``walked_sets``: what ``detect`` names on the whole image, two tasks at most), and, for one that
suggests tasks (``Peeling.suggest``), how many suggestions were right (that degradation there and
not run) or wrong (``walked_suggestions``). The classifiers
must share the walk's weights: they differ in their thresholds only (``--peel`` calibrations of one
classifier in scripts/train_blind_classifier.py). Seconds per classifier where blind_accuracy.py
takes minutes; no tiles, no timing - that stays blind_accuracy.py's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
from blind_accuracy import add_image_arguments, benchmark_cases, degraded, read_photos

from instruct_ipt.data.degradations import DEGRADATIONS, composite_tasks, is_composite
from instruct_ipt.data.images import list_images
from instruct_ipt.instruct.blind import (
    DegradationClassifier,
    load_walks,
    peel_walks,
    save_walks,
    suggestion_outcomes,
    walked_sets,
    walked_suggestions,
)
from instruct_ipt.io import state_digest
from instruct_ipt.pipeline import RestorationPipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_image_arguments(ap)
    ap.add_argument("--walks", required=True, help="the walks' file (.npz): written on the first run, read back later")
    ap.add_argument("--model", help="restoration model folder (default: the shipped model)")
    args = ap.parse_args()
    names = args.classifier or ["packaged"]
    clfs = [DegradationClassifier.default() if n == "packaged" else DegradationClassifier.load(n) for n in names]
    for n, c in zip(names, clfs):
        if c.peeling is None:
            raise SystemExit(f"{n}: no peeling to compare (a walk scores peeling thresholds)")
    weights = {state_digest(c.state_dict()) for c in clfs}
    if len(weights) > 1:
        raise SystemExit("the classifiers' weights differ: one walk serves threshold choices of one classifier")
    if len({json.dumps(c.grid_key(), sort_keys=True) for c in clfs}) > 1:
        raise SystemExit("the classifiers place their crops differently (JPEG grid, crops per side): their walks differ")
    regions = {c.peeling.region for c in clfs}
    if len(regions) > 1:  # the walk restores one crop size: another's thresholds would be scored on what they never see
        raise SystemExit(f"the classifiers' peelings judge crops of different sizes ({', '.join(map(str, sorted(regions)))} px): "
                         "one walk serves one region")
    more = [n for n, c in zip(names, clfs) if c.peeling.max_tasks > 2]
    if more:  # a third task named would go unseen: the walk has two steps
        raise SystemExit(f"{', '.join(more)}: peels up to {max(c.peeling.max_tasks for c in clfs)} tasks, and a walk "
                         "records two steps: it cannot score a third")
    pipe = RestorationPipeline.from_pretrained(args.model) if args.model else RestorationPipeline.from_pretrained()
    files = [f for v in map(Path, args.val) for f in (list_images(v) if v.is_dir() else [v])]
    tasks = [t for t in DEGRADATIONS if t in clfs[0].tasks]
    cases = benchmark_cases(tasks, args.composite)
    key = json.dumps({"classifier": weights.pop(), "model": state_digest(pipe.model.state_dict()), "seeds": args.seeds, "cases": cases,
                      # (a list in order, not a dict by name: two folders may each hold an x.png)
                      "photos": [[f.name, hashlib.sha256(f.read_bytes()).hexdigest()] for f in files],
                      "region": clfs[0].peeling.region} | clfs[0].grid_key() | ({"crop": list(args.crop)} if args.crop else {}),
                     sort_keys=True)
    path = Path(args.walks)
    if path.exists():
        try:
            walks = load_walks(path, key, extra=("case",))
        except ValueError as e:  # walks for other weights, photos, seeds or cases
            raise SystemExit(str(e)) from None
        print(f"walks read from {path}")
    else:
        photos = read_photos(files, args.crop)
        items, labels = [], []
        for label, spec in cases:
            expected = () if spec is None else tuple(composite_tasks(spec)) if is_composite(spec) else (spec,)
            for image in degraded(photos, label, spec, args.seeds):
                items.append((image, expected))
                labels.append(label)
        walks = peel_walks(clfs[0], items, lambda x, t: pipe.run(x, [t]), clfs[0].peeling.region)
        walks["case"] = np.array(labels)
        save_walks(path, walks, key)
        print(f"walks written to {path}")
    print(f"photos: {len(files)} ({', '.join(f.name for f in files)}), {args.seeds} degraded version(s) each per case")
    present = walks["present"]
    named = [walked_sets(c, walks) for c in clfs]
    right = [(s == present).all(1) for s in named]
    good, bad = zip(*(suggestion_outcomes(walked_suggestions(c, walks), s, present) for c, s in zip(clfs, named)))

    def cell(k: int, rows: np.ndarray) -> str:
        hint = f" (suggested: {good[k][rows].sum()} right, {bad[k][rows].sum()} wrong)" if clfs[k].peeling.suggest else ""
        return f"{right[k][rows].sum()}/{rows.sum()}{hint}"

    print(f"| case | {' | '.join(names)} |")
    print(f"| --- |{' --- |' * len(names)}")
    for label, _ in cases:
        rows = walks["case"] == label
        print(f"| {label} | {' | '.join(cell(k, rows) for k in range(len(clfs)))} |")
    count = present.sum(1)
    for n, what in ((1, "single"), (2, "composite"), (0, "clean")):
        rows = count == n
        print(f"| all {what} | {' | '.join(cell(k, rows) for k in range(len(clfs)))} |")


if __name__ == "__main__":
    main()
