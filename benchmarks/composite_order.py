"""Which order undoes two degradations best? Every pair of tasks, both orders, side by side.

For each pair of the model's tasks (or each ``--composite``), every tile of the photos is degraded
once with both degradations (applied in the physical order, seeded per composite and tile as
``instruct-ipt eval --composite`` does) and restored twice through the pipeline: in the rule's order
(:data:`~instruct_ipt.instruct.PIPELINE_ORDER`, the reverse of how the degradations arise) and in
the opposite one. Printed per pair: the input
PSNR, both orders' mean PSNR, the paired difference with its standard error over tiles, on how
many tiles and on how many photos (tile means per photo) each order won, and a verdict:
an order is *better* when the difference is beyond two standard errors *and* it wins on most
photos; otherwise *either*. Then the order those verdicts imply (a topological sort, ties kept
in the rule's order), or a cycle of verdicts that prevents one; the verdicts as the table
:data:`~instruct_ipt.instruct.MEASURED_GAINS` holds (what the shipped table was made from); and
the pairs where :func:`~instruct_ipt.instruct.order_tasks` - what the pipeline runs - disagrees
with this run's verdicts.

Tiles: each photo is cut into non-overlapping ``--tile`` squares (top-left aligned), so the 4
validation photos give 36 tiles of 192 px; tiles of one photo are not independent, hence the
per-photo count.

    python benchmarks/composite_order.py --photos ../shared/photos/val [--model default] \\
        [--tile 256] [--sigma 15] [--composite rain+noise ...] [--json runs/order.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from instruct_ipt.data.degradations import composite_name, composite_tasks
from instruct_ipt.data.validation import write_tiles
from instruct_ipt.eval.metrics import psnr
from instruct_ipt.eval.protocol import default_protocol
from instruct_ipt.eval.runner import Case, synthetic_cases
from instruct_ipt.instruct import PIPELINE_ORDER, order_tasks
from instruct_ipt.instruct.order import MEASURED_GAINS
from instruct_ipt.pipeline import RestorationPipeline


def rule_order(tasks) -> list[str]:
    """``tasks`` in :data:`PIPELINE_ORDER` (the reverse of how the degradations arise)."""
    return sorted(tasks, key=PIPELINE_ORDER.index)


def implied_order(better: dict[tuple[str, str], str], tasks: list[str]) -> list[str] | list[tuple[str, str]]:
    """A total order where each decided pair runs its better task first (Kahn's algorithm, ties in
    the rule's order); if the verdicts form a cycle, the pairs of that cycle instead."""
    first = {pair: winner for pair, winner in better.items() if winner}
    after = {t: {b if a == t else a for (a, b), w in first.items() if w == t} for t in tasks}
    indegree = {t: sum(t in s for s in after.values()) for t in tasks}
    order = []
    ready = [t for t in rule_order(tasks) if indegree[t] == 0]
    while ready:
        t = ready.pop(0)
        order.append(t)
        for u in rule_order(list(after[t])):
            indegree[u] -= 1
            if indegree[u] == 0:
                ready.append(u)
        ready = rule_order(ready)
    if len(order) < len(tasks):
        return find_cycle({t: after[t] for t in set(tasks) - set(order)})
    return order


def find_cycle(after: dict[str, set[str]]) -> list[tuple[str, str]]:
    """One cycle of the graph ``task -> tasks it must precede``, among the tasks Kahn's algorithm
    left (the keys), as the pairs along it. Each of them still has a predecessor among them (else
    it would have been emitted), so walking predecessors must come back to a task already seen."""
    before = {t: sorted(u for u in after if t in after[u]) for t in after}
    path, seen = [min(after)], {min(after): 0}
    while before[path[-1]][0] not in seen:
        seen[before[path[-1]][0]] = len(path)
        path.append(before[path[-1]][0])
    cycle = path[seen[before[path[-1]][0]]:] + [before[path[-1]][0]]
    return list(itertools.pairwise(reversed(cycle)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", action="append", required=True, help="folder of clean photos, or one photo (repeatable)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--sigma", type=float, default=15.0, help="noise level of a noise component")
    ap.add_argument("--composite", action="append", help="pairs to measure (default: every pair of the model's tasks)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write every tile's figures here")
    args = ap.parse_args()

    if args.tile <= 0:
        raise SystemExit(f"--tile must be positive, got {args.tile}")
    pipe = RestorationPipeline.from_pretrained(args.model, device="cpu")
    tasks = [t for t in PIPELINE_ORDER if t in pipe.tasks]
    names = [composite_name(p) for p in itertools.combinations(tasks, 2)]
    if args.composite:
        try:
            parts = [composite_tasks(c) for c in args.composite]
        except ValueError as e:
            raise SystemExit(str(e)) from None
        for c, p in zip(args.composite, parts):
            if len(p) != 2:
                raise SystemExit(f"{c!r}: the benchmark compares the two orders of a pair; give two degradations")
            if not set(p) <= set(tasks):
                raise SystemExit(f"{c!r}: the model has no {', '.join(t for t in p if t not in tasks)} task")
        names = [composite_name(p) for p in parts]
    print(f"rule's order (PIPELINE_ORDER): {', '.join(PIPELINE_ORDER)}")
    rows, better, per_tile, gains = [], {}, [], {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            owner = write_tiles(args.photos, args.tile, tmp)
        except (ValueError, FileNotFoundError) as e:
            raise SystemExit(str(e)) from None
        print(f"{len(owner)} tiles of {args.tile} px from {len(set(owner.values()))} photos; sigma {args.sigma:g}\n")
        print(f"{'composite':<12} {'input':>6} {'rule order':>24} {'other order':>24} {'diff':>15} "
              f"{'tiles':>6} {'photos':>6}  verdict")
        for name in names:
            rule = rule_order(composite_tasks(name))
            other = rule[::-1]
            protocol = default_protocol(name)
            scores: dict[str, list[float]] = {"input": [], "rule": [], "other": []}
            photo_diff: dict[str, list[float]] = {}
            for case in synthetic_cases(tmp, [name], params={"denoise": {"sigma": args.sigma}}, seed=args.seed):
                assert isinstance(case, Case), case
                values = {}
                for key, out in (("input", case.input), ("rule", pipe.run(case.input, rule)),
                                 ("other", pipe.run(case.input, other))):
                    values[key] = psnr(protocol.prepare_output(out), case.target, protocol.crop_border)
                    scores[key].append(values[key])
                photo_diff.setdefault(owner[case.name], []).append(values["rule"] - values["other"])
                per_tile.append({"composite": name, "tile": case.name, **values})
            diffs = [c - o for c, o in zip(scores["rule"], scores["other"])]
            mean = statistics.fmean(diffs)
            se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.inf
            tiles_won = sum(d > 0 for d in diffs)
            photos_won = sum(statistics.fmean(v) > 0 for v in photo_diff.values())
            n_photos = len(photo_diff)
            if abs(mean) > 2 * se and (photos_won > n_photos / 2 if mean > 0 else photos_won < n_photos / 2):
                winner = rule if mean > 0 else other
                verdict = f"{' -> '.join(winner)} better"
            else:
                winner = None
                verdict = "either"
            pair = tuple(sorted(rule))
            better[pair] = winner[0] if winner else None
            if winner:
                gains[tuple(winner)] = abs(mean)
            rows.append({"composite": name, "rule": rule, "other": other,
                         "input": statistics.fmean(scores["input"]), "rule_psnr": statistics.fmean(scores["rule"]),
                         "other_psnr": statistics.fmean(scores["other"]), "diff": mean, "se": se,
                         "tiles_won": tiles_won, "tiles": len(diffs), "photos_won": photos_won, "photos": n_photos,
                         "verdict": verdict})
            r = rows[-1]
            cur = f"{' -> '.join(rule)} {r['rule_psnr']:.2f}"
            oth = f"{' -> '.join(other)} {r['other_psnr']:.2f}"
            print(f"{name:<12} {r['input']:6.2f} {cur:>24} {oth:>24} {mean:+7.3f} ± {se:.3f} "
                  f"{tiles_won:>3}/{len(diffs):<3} {photos_won:>2}/{n_photos:<3}  {verdict}", flush=True)
    implied = implied_order(better, tasks)
    print(f"\n{time.perf_counter() - t0:.0f} s")
    if implied and isinstance(implied[0], tuple):
        print("no order satisfies every verdict; a cycle: " + ", ".join(f"{a} before {b}" for a, b in implied))
    else:
        print(f"order the verdicts imply: {', '.join(implied)}")
    losses = [r["composite"] for r in rows if r["verdict"] != "either" and r["diff"] < 0]
    print(f"pairs where the rule's order loses beyond noise: {', '.join(losses) or 'none'}")
    print("as MEASURED_GAINS: {" + ", ".join(f"({a!r}, {b!r}): {g:.3f}" for (a, b), g in gains.items()) + "}")
    if gains.keys() != MEASURED_GAINS.keys():
        print(f"  (the shipped table differs in its pairs: {sorted(MEASURED_GAINS)})")
    disagree = [f"{a} before {b}" for (a, b) in gains if order_tasks([a, b]) != [a, b]]
    print(f"pairs where the pipeline's order_tasks disagrees with this run: {', '.join(disagree) or 'none'}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"rows": rows, "tiles": per_tile, "implied": implied,
                                               "settings": vars(args)}, indent=1, default=str))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
