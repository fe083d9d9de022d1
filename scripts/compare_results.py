"""Compare two ``instruct-ipt eval`` runs task by task: PSNR (each task's protocol channel) of a
new model against an old one, and whether the new one may replace it as the default.

The rule (issue 16): the new model beats the old on at least ``--min-wins`` tasks and loses no
more than ``--max-loss`` dB on any; exit status 0 if it may, 1 if not.

    python scripts/compare_results.py NEW/results.csv OLD/results.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def read_psnr(path: Path, method: str) -> dict[str, float]:
    """Task -> PSNR of ``method``'s rows (``psnr_y`` where the protocol measures Y, else ``psnr_rgb``)."""
    out: dict[str, float] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["method"] != method:
                continue
            value = next((row[k] for k in row if k.startswith("psnr") and row[k] not in ("", "nan")), None)
            if value is None:
                raise ValueError(f"{path}: no PSNR for task {row['task']}")
            out[row["task"]] = float(value)
    if not out:
        raise ValueError(f"{path}: no rows of method {method!r}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("new", type=Path)
    ap.add_argument("old", type=Path)
    ap.add_argument("--method", default="instruct-ipt")
    ap.add_argument("--min-wins", type=int, default=5)
    ap.add_argument("--max-loss", type=float, default=0.1)
    args = ap.parse_args()
    new, old = read_psnr(args.new, args.method), read_psnr(args.old, args.method)
    tasks = [t for t in old if t in new]
    print(f"{'task':10s} {'new':>8s} {'old':>8s} {'diff':>7s}")
    for t in tasks:
        print(f"{t:10s} {new[t]:8.2f} {old[t]:8.2f} {new[t] - old[t]:+7.2f}")
    wins = sum(new[t] > old[t] for t in tasks)
    worst = min(new[t] - old[t] for t in tasks)
    ok = wins >= min(args.min_wins, len(tasks)) and worst >= -args.max_loss
    print(f"new beats old on {wins} of {len(tasks)} tasks; largest loss {max(0.0, -worst):.2f} dB -> "
          + ("may replace it" if ok else "keep the old one"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
