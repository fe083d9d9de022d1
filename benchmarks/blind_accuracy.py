"""Blind-mode accuracy: which degradation does the classifier see, per task, on the validation photos.

Degrades each clean validation photo once per task and per seed (``--seeds N`` draws N different
degradations of every photo: noise level, blur kernel, rain pattern, ...; default operator of each
task, whole images) and reports accuracy per task, per image (crops averaged by
``DegradationClassifier.predict``) and per 256x256 tile (each tile classified alone, a harder test).
Target (issue 5): >= 95% on single degradations.

    python benchmarks/blind_accuracy.py --val ../shared/photos/val [--val PHOTO ...] [--seeds 5] [--classifier FILE]

The shipped classifier leaves five training photos out (see docs/instructions.md); add them with
``--val ../shared/photos/train/bridge.png`` etc. for a larger test set.
"""

from __future__ import annotations

import argparse
import tempfile

from instruct_ipt.data.degradations import DEGRADATIONS, make_degradation
from instruct_ipt.data.validation import ValidationSet
from instruct_ipt.instruct.blind import DegradationClassifier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--val", action="append", required=True, help="folder of clean photos, or one photo (repeatable)")
    ap.add_argument("--classifier", help="classifier file (default: the packaged one)")
    ap.add_argument("--seeds", type=int, default=1, help="degraded versions of each photo per task")
    ap.add_argument("--tile", type=int, default=256)
    args = ap.parse_args()
    clf = DegradationClassifier.load(args.classifier) if args.classifier else DegradationClassifier.default()
    ops = {t: make_degradation(t) for t in DEGRADATIONS if t in clf.tasks}
    with tempfile.TemporaryDirectory() as tmp:
        sets = [ValidationSet.build(args.val, ops, f"{tmp}/{seed}", crop=0, seed=seed) for seed in range(args.seeds)]
        print(f"classifier tasks: {', '.join(clf.tasks)}; validation photos: {len(sets[0].by_task(clf.tasks[0]))}, "
              f"{args.seeds} degraded version(s) each")
        img_ok = img_n = tile_ok = tile_n = 0
        for task in ops:
            items = [it for val in sets for it in val.by_task(task)]
            i_ok = sum(max((p := clf.predict(it.input)), key=p.get) == task for it in items)
            t_ok = t_n = 0
            for it in items:
                h, w = it.input.shape[:2]
                for r in range(0, h - args.tile + 1, args.tile):
                    for c in range(0, w - args.tile + 1, args.tile):
                        p = clf.predict(it.input[r : r + args.tile, c : c + args.tile], max_crops=4)
                        t_ok += max(p, key=p.get) == task
                        t_n += 1
            print(f"  {task:<8} images {i_ok}/{len(items)}  tiles {t_ok}/{t_n} = {100 * t_ok / max(1, t_n):.1f}%")
            img_ok, img_n, tile_ok, tile_n = img_ok + i_ok, img_n + len(items), tile_ok + t_ok, tile_n + t_n
    print(f"overall: images {img_ok}/{img_n} = {100 * img_ok / img_n:.1f}%, "
          f"tiles {tile_ok}/{tile_n} = {100 * tile_ok / tile_n:.1f}% (target >= 95%)")


if __name__ == "__main__":
    main()
