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

A ``--composite`` of three or four degradations (``rain+blur+noise``) is restored in *every*
order instead (6 or 24 runs per tile): printed per composite, each order's mean PSNR, the order
:func:`~instruct_ipt.instruct.order_tasks` runs (the permutation that keeps the most pairwise
gain: its guess from the pairs' table) against the best order measured (the paired difference with
its standard error, tiles and photos), and whether the pipeline's order is the best, within noise
of it (*either*: two standard errors, most photos), or beaten.

Tiles: each photo is cut into non-overlapping ``--tile`` squares (top-left aligned), so the 4
validation photos give 36 tiles of 192 px; tiles of one photo are not independent, hence the
per-photo count.

    python benchmarks/composite_order.py --photos ../shared/photos/val [--model default] \\
        [--tile 256] [--sigma 15 | --random-sigma] [--composite rain+noise ...] [--json runs/order.json]
    python benchmarks/composite_order.py --photos ../shared/photos/val --random-sigma --composite rain+blur+noise
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from instruct_ipt.data.degradations import composite_name, composite_tasks
from instruct_ipt.data.validation import tile_photo, write_tiles
from instruct_ipt.eval.metrics import psnr
from instruct_ipt.eval.protocol import default_protocol
from instruct_ipt.eval.runner import Case, synthetic_cases
from instruct_ipt.instruct import PIPELINE_ORDER, order_tasks
from instruct_ipt.instruct.order import MEASURED_GAINS
from instruct_ipt.pipeline import RestorationPipeline


def rule_order(tasks) -> list[str]:
    """``tasks`` in :data:`PIPELINE_ORDER` (the reverse of how the degradations arise): the
    pipeline's order without measured gains."""
    return order_tasks(tasks, gains={})


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


def judge(name: str, tiles: list[dict]) -> dict:
    """One pair's row from its tiles (``{"tile", "photo", "input", "rule", "other"}``, PSNR dB):
    the means, the paired difference rule - other with its standard error over tiles, tiles and
    photos won by the rule, and the verdict (beyond two standard errors *and* most photos)."""
    rule = rule_order(composite_tasks(name))
    other = rule[::-1]
    diffs = [t["rule"] - t["other"] for t in tiles]
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.inf
    photo_diff: dict[str, list[float]] = {}
    for t in tiles:
        photo_diff.setdefault(t["photo"], []).append(t["rule"] - t["other"])
    photos_won = sum(statistics.fmean(v) > 0 for v in photo_diff.values())
    n_photos = len(photo_diff)
    winner = None
    if abs(mean) > 2 * se and (photos_won > n_photos / 2 if mean > 0 else photos_won < n_photos / 2):
        winner = rule if mean > 0 else other
    return {"composite": name, "rule": rule, "other": other, "input": statistics.fmean(t["input"] for t in tiles),
            "rule_psnr": statistics.fmean(t["rule"] for t in tiles), "other_psnr": statistics.fmean(t["other"] for t in tiles),
            "diff": mean, "se": se, "tiles_won": sum(d > 0 for d in diffs), "tiles": len(diffs),
            "photos_won": photos_won, "photos": n_photos, "winner": winner,
            "verdict": f"{' -> '.join(winner)} better" if winner else "either"}


def order_key(order) -> str:
    """An order as the JSON files hold it: ``"deblur>derain>denoise"``."""
    return ">".join(order)


def judge_orders(name: str, tiles: list[dict]) -> dict:
    """A longer composite's row from its tiles (``{"tile", "photo", "input", "orders": {order_key:
    PSNR}}``): each order's mean, the best one, and the pipeline's (:func:`order_tasks`) against it -
    the paired difference best - pipeline with its standard error over tiles, the tiles and photos
    where the best order did better, and the verdict: *best* (the pipeline's order is the best
    measured), *either* (behind by no more than two standard errors, or on no more than half the
    photos) or *beaten*."""
    means = {k: statistics.fmean(t["orders"][k] for t in tiles) for k in tiles[0]["orders"]}
    best = max(means, key=means.get)
    pipeline = order_key(order_tasks(composite_tasks(name)))
    diffs = [t["orders"][best] - t["orders"][pipeline] for t in tiles]
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.inf
    photo_diff: dict[str, list[float]] = {}
    for t, d in zip(tiles, diffs):
        photo_diff.setdefault(t["photo"], []).append(d)
    photos_won = sum(statistics.fmean(v) > 0 for v in photo_diff.values())
    verdict = ("best" if best == pipeline else
               "beaten" if mean > 2 * se and photos_won > len(photo_diff) / 2 else "either")
    return {"composite": name, "means": means, "best": best, "pipeline": pipeline, "input":
            statistics.fmean(t["input"] for t in tiles), "diff": mean, "se": se, "tiles_won": sum(d > 0 for d in diffs),
            "tiles": len(diffs), "photos_won": photos_won, "photos": len(photo_diff), "verdict": verdict}


def print_orders(r: dict) -> None:
    """A longer composite's orders, best first, and the pipeline's against the best."""
    print(f"\n{r['composite']} (input {r['input']:.2f} dB, {r['tiles']} tiles from {r['photos']} photos):")
    for k in sorted(r["means"], key=r["means"].get, reverse=True):
        tag = "  <- order_tasks" if k == r["pipeline"] else ""
        print(f"  {k.replace('>', ' -> '):<36} {r['means'][k]:6.2f}{tag}")
    if r["verdict"] == "best":
        print("  order_tasks runs the best order measured")
    else:
        print(f"  best - order_tasks: {r['diff']:+.3f} ± {r['se']:.3f} dB, better on {r['tiles_won']}/{r['tiles']} tiles, "
              f"{r['photos_won']}/{r['photos']} photos: {'beaten' if r['verdict'] == 'beaten' else 'either (within noise)'}")


def measure(args, names: list[str], pipe: RestorationPipeline) -> Iterator[tuple[str, list[dict]]]:
    """Each pair's tiles, restored both ways (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            owner = write_tiles(args.photos, args.tile, tmp)
        except (ValueError, FileNotFoundError) as e:
            raise SystemExit(str(e)) from None
        level = "sigma drawn per tile (0-50)" if args.random_sigma else f"sigma {args.sigma:g}"
        print(f"{len(owner)} tiles of {args.tile} px from {len(set(owner.values()))} photos; {level}\n")
        params = {} if args.random_sigma else {"denoise": {"sigma": args.sigma}}
        for name in names:
            rule = rule_order(composite_tasks(name))
            protocol = default_protocol(name)
            tiles = []
            for case in synthetic_cases(tmp, [name], params=params, seed=args.seed):
                if not isinstance(case, Case):
                    raise SystemExit(f"{case.name}: {case.reason}")
                def score(out: np.ndarray, case: Case = case, protocol=protocol) -> float:
                    return psnr(protocol.prepare_output(out), case.target, protocol.crop_border)

                if len(rule) > 2:  # every order
                    values = {"input": score(case.input), "orders": {order_key(o): score(pipe.run(case.input, list(o)))
                                                                     for o in itertools.permutations(rule)}}
                else:
                    values = {key: score(out) for key, out in (("input", case.input), ("rule", pipe.run(case.input, rule)),
                                                               ("other", pipe.run(case.input, rule[::-1])))}
                tiles.append({"composite": name, "tile": case.name, "photo": owner[case.name], **values})
            yield name, tiles


def pooled(paths: list[str]) -> Iterator[tuple[str, list[dict]]]:
    """Each pair's tiles from earlier runs' ``--json`` files, pooled (photos told apart by run)."""
    by_pair: dict[str, list[dict]] = {}
    for k, path in enumerate(paths):
        if not Path(path).is_file():
            raise SystemExit(f"{path}: no such file (a --json file of an earlier run)")
        for t in json.loads(Path(path).read_text(encoding="utf-8"))["tiles"]:
            photo = t.get("photo") or tile_photo(t["tile"])
            by_pair.setdefault(t["composite"], []).append({**t, "photo": f"{k}:{photo}"})
    print(f"pooled {len(paths)} runs: {', '.join(paths)}\n")
    yield from by_pair.items()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", action="append", help="folder of clean photos, or one photo (repeatable)")
    ap.add_argument("--pool", action="append", metavar="JSON",
                    help="instead of measuring: judge the tiles of earlier runs' --json files together (repeatable)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--tile", type=int, default=256)
    level = ap.add_mutually_exclusive_group()
    level.add_argument("--sigma", type=float, default=15.0, help="noise level of a noise component")
    level.add_argument("--random-sigma", action="store_true",
                    help="instead: each tile's noise level drawn by the default noise operator (0-50, seeded per tile "
                         "as `eval --composite` without --sigma), so the verdict weighs the levels users meet together")
    ap.add_argument("--composite", action="append", help="pairs to measure (default: every pair of the model's tasks)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write every tile's figures here")
    args = ap.parse_args()

    if args.random_sigma:
        args.sigma = None  # (not argparse's default 15 in the --json settings: no one level was used)
    if bool(args.photos) == bool(args.pool):
        raise SystemExit("give --photos (measure) or --pool (judge earlier runs together), one of the two")
    if args.tile <= 0:
        raise SystemExit(f"--tile must be positive, got {args.tile}")
    tasks = list(PIPELINE_ORDER)
    if args.photos:
        pipe = RestorationPipeline.from_pretrained(args.model, device="cpu")
        tasks = [t for t in PIPELINE_ORDER if t in pipe.tasks]
        names = [composite_name(p) for p in itertools.combinations(tasks, 2)]
        if args.composite:
            try:
                parts = [composite_tasks(c) for c in args.composite]
            except ValueError as e:
                raise SystemExit(str(e)) from None
            for c, p in zip(args.composite, parts):
                if not 2 <= len(p) <= 4:
                    raise SystemExit(f"{c!r}: the benchmark compares the orders of two to four degradations (24 orders)")
                if not set(p) <= set(tasks):
                    raise SystemExit(f"{c!r}: the model has no {', '.join(t for t in p if t not in tasks)} task")
            names = [composite_name(p) for p in parts]
    print(f"rule's order (PIPELINE_ORDER): {', '.join(PIPELINE_ORDER)}")
    rows, better, per_tile, gains = [], {}, [], {}
    t0 = time.perf_counter()
    header = False
    longer = []
    for name, tiles in (measure(args, names, pipe) if args.photos else pooled(args.pool)):
        if "orders" in tiles[0]:
            longer.append(judge_orders(name, tiles))
            per_tile += tiles
            continue
        if not header:
            print(f"{'composite':<12} {'input':>6} {'rule order':>24} {'other order':>24} {'diff':>15} "
                  f"{'tiles':>6} {'photos':>6}  verdict")
            header = True
        r = judge(name, tiles)
        rows.append(r)
        per_tile += tiles
        better[tuple(sorted(r["rule"]))] = r["winner"][0] if r["winner"] else None
        if r["winner"]:
            gains[tuple(r["winner"])] = abs(r["diff"])
        cur = f"{' -> '.join(r['rule'])} {r['rule_psnr']:.2f}"
        oth = f"{' -> '.join(r['other'])} {r['other_psnr']:.2f}"
        print(f"{name:<12} {r['input']:6.2f} {cur:>24} {oth:>24} {r['diff']:+7.3f} ± {r['se']:.3f} "
              f"{r['tiles_won']:>3}/{r['tiles']:<3} {r['photos_won']:>2}/{r['photos']:<3}  {r['verdict']}", flush=True)
    for r in longer:
        print_orders(r)
    print(f"\n{time.perf_counter() - t0:.0f} s")
    if args.json and not rows:
        write_json(args.json, {"rows": [], "orders": longer, "tiles": per_tile, "settings": vars(args)})
    if not rows:
        return
    tasks = [t for t in tasks if any(t in r["rule"] for r in rows)]
    implied = implied_order(better, tasks)
    if implied and isinstance(implied[0], tuple):
        print("no order satisfies every verdict; a cycle: " + ", ".join(f"{a} before {b}" for a, b in implied))
    else:
        print(f"order the verdicts imply: {', '.join(implied)}")
    losses = [r["composite"] for r in rows if r["winner"] and r["diff"] < 0]
    print(f"pairs where the rule's order loses beyond noise: {', '.join(losses) or 'none'}")
    print("as MEASURED_GAINS: {" + ", ".join(f"({a!r}, {b!r}): {g:.3f}" for (a, b), g in gains.items()) + "}")
    if gains.keys() != MEASURED_GAINS.keys():
        print(f"  (the shipped table differs in its pairs: {sorted(MEASURED_GAINS)})")
    disagree = [f"{a} before {b}" for (a, b) in gains if order_tasks([a, b]) != [a, b]]
    print(f"pairs where the pipeline's order_tasks disagrees with this run: {', '.join(disagree) or 'none'}")
    if args.json:
        write_json(args.json, {"rows": rows, "orders": longer, "tiles": per_tile, "implied": implied, "settings": vars(args)})


def write_json(path: str, figures: dict) -> None:
    """``--json``: every tile's figures and the judged rows."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
