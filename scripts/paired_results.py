"""Compare two ``instruct-ipt eval`` runs image by image: for every table row (task, dataset,
method) both runs have, the mean PSNR of each (the protocol's channel: Y where it measures Y), the
paired difference NEW - OLD with its standard error over the images, on how many images NEW won,
and - for tiles named ``<photo>-<top>-<left>`` (``scripts/tile_photos.py``) - on how many photos
(mean over the photo's tiles). A difference beyond two standard errors is marked ``*``; tiles of
one photo are not independent, so read the mark together with the photo count. Equal-budget
comparisons (issue 23's ``data.composite``) and any two models evaluated on the same photos:

    python scripts/paired_results.py NEW/results.json OLD/results.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from instruct_ipt.data.validation import tile_photo


def per_image(path: Path) -> dict[tuple[str, str, str], dict[str, tuple[str, float]]]:
    """(task, dataset, method) -> image -> (metric, PSNR) from a results.json's per-image records."""
    out: dict[tuple[str, str, str], dict[str, tuple[str, float]]] = {}
    for r in json.loads(Path(path).read_text(encoding="utf-8"))["images"]:
        metric = "psnr_rgb" if "psnr_rgb" in r["metrics"] else "psnr_y"
        out.setdefault((r["task"], r["dataset"], r["method"]), {})[r["image"]] = (metric, r["metrics"][metric])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("new")
    ap.add_argument("old")
    args = ap.parse_args()
    for path in (args.new, args.old):
        if not Path(path).is_file():
            raise SystemExit(f"{path}: no such file (the results.json that instruct-ipt eval --out DIR writes)")
    new, old = per_image(args.new), per_image(args.old)
    print(f"{'task':<11} {'dataset':<28} {'method':<14} {'old':>6} {'new':>6} {'new - old':>17} {'new won':>8} {'photos':>7}")
    unmatched = 0
    for key in new.keys() | old.keys():
        if key not in new or key not in old:
            unmatched += 1
    for key in (k for k in new if k in old):
        images = [i for i in new[key] if i in old[key]]
        unmatched += len(set(new[key]) ^ set(old[key]))
        metrics = {new[key][i][0] for i in images} | {old[key][i][0] for i in images}
        if len(metrics) > 1:
            raise SystemExit(f"{key}: the runs measured different channels ({', '.join(sorted(metrics))})")
        diffs = {i: new[key][i][1] - old[key][i][1] for i in images}
        if not diffs:
            continue
        mean = statistics.fmean(diffs.values())
        se = statistics.stdev(diffs.values()) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.inf
        mark = " *" if abs(mean) > 2 * se else ""
        won = sum(d > 0 for d in diffs.values())
        photos: dict[str, list[float]] = {}
        for i, d in diffs.items():
            photos.setdefault(tile_photo(i), []).append(d)
        photo_won = sum(statistics.fmean(v) > 0 for v in photos.values())
        print(f"{key[0]:<11} {key[1]:<28} {key[2]:<14} {statistics.fmean(old[key][i][1] for i in images):6.2f} "
              f"{statistics.fmean(new[key][i][1] for i in images):6.2f} {mean:+7.3f} ± {se:.3f}{mark:<2} "
              f"{won:>3}/{len(diffs):<4} {photo_won:>2}/{len(photos)}")
    print("* beyond two standard errors over the images")
    if unmatched:
        print(f"left out: {unmatched} rows or images found in only one of the two runs")


if __name__ == "__main__":
    main()
