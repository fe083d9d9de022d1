"""Compare two ``instruct-ipt eval`` runs image by image: for every table row (task, dataset,
method) both runs have, the mean PSNR of each (the protocol's channel: Y where it measures Y), the
paired difference NEW - OLD with its standard error over the images, and on how many images NEW
won; a difference beyond two standard errors is marked. Equal-budget comparisons (issue 23's
``data.composite``) and any two models evaluated on the same photos and seed:

    python scripts/paired_results.py NEW/results.json OLD/results.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path


def per_image(path: Path) -> dict[tuple[str, str, str], dict[str, float]]:
    """(task, dataset, method) -> image -> PSNR from a results.json's per-image records."""
    out: dict[tuple[str, str, str], dict[str, float]] = {}
    for r in json.loads(Path(path).read_text(encoding="utf-8"))["images"]:
        metric = "psnr_y" if "psnr_y" in r["metrics"] and "psnr_rgb" not in r["metrics"] else "psnr_rgb"
        out.setdefault((r["task"], r["dataset"], r["method"]), {})[r["image"]] = r["metrics"][metric]
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
    print(f"{'task':<11} {'method':<14} {'old':>6} {'new':>6} {'new - old':>16} {'new won':>8}")
    for key in (k for k in new if k in old):
        images = [i for i in new[key] if i in old[key]]
        diffs = [new[key][i] - old[key][i] for i in images]
        if not diffs:
            continue
        mean = statistics.fmean(diffs)
        se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.inf
        mark = " *" if abs(mean) > 2 * se else ""
        won = sum(d > 0 for d in diffs)
        print(f"{key[0]:<11} {key[2]:<14} {statistics.fmean(old[key][i] for i in images):6.2f} "
              f"{statistics.fmean(new[key][i] for i in images):6.2f} {mean:+7.3f} ± {se:.3f}{mark:<2} "
              f"{won:>3}/{len(diffs)}")
    print("* beyond two standard errors")


if __name__ == "__main__":
    main()
