"""Blind-mode accuracy: which degradations does each classifier see, on photos it never trained on.

Degrades each clean photo once per case and per seed (``--seeds N`` draws N different
degradations: noise level, blur kernel, rain pattern, ...; each task's default operator, whole
images) and counts, per classifier side by side, the images whose *set* of detected tasks is
exactly right (``DegradationClassifier.detect``, crops averaged as blind mode does). Cases: every
single degradation, every ``--composite`` (default: the four of issue 23 and blur+noise), and the
clean photo itself (right only when nothing is detected - a single-label classifier without a clean
class always names a task). For single degradations ``tiles`` also classifies each 256x256 tile alone (a harder test,
counted per task with what the wrong tiles were seen as;
``--tile 0`` skips it: with a peeling classifier each tile is restored, most of the run's time).
``jpeg, cropped`` asks again of each JPEG image cropped by a few pixels (:func:`shifted`: 1-7 px
across, 0-7 down), as a photo cropped after it was saved is: its 8 px block grid no longer starts
at the corner (not counted in ``all single``, so that row stays comparable with earlier runs).
``--crop WxH`` centre-crops each photo before degrading it (blind mode's grid of crops sees less of a
smaller image: issue 23 measured on 512x384 crops). Target (issue 5): >= 95% on single degradations.
``--pixels`` also restores every image as each classifier's blind mode would (its tasks, in its
order, on the whole image; nothing when it sees nothing) and as naming the right tasks would (in
the restoration order: ``named``), and prints a second table of mean PSNR (RGB, outputs rounded to
8 bits) against the clean photo: what a wrong set costs in dB, beside the counts.

    python benchmarks/blind_accuracy.py --val ../shared/photos/val [--val PHOTO ...] [--seeds 3] \\
        [--classifier FILE ...] [--composite rain+noise ...] [--tile 256] [--crop 512x384] [--pixels]

Without ``--classifier``: the packaged one. A classifier with peeling (``--peel`` in
scripts/train_blind_classifier.py) restores with ``--model`` (default: the shipped model) as blind
mode does; ``s/image`` is the mean time of ``detect`` per whole image. The shipped classifier leaves five training photos out
(see docs/instructions.md); add them with ``--val ../shared/photos/train/bridge.png`` etc. for a
larger test set (not for a multi-label classifier: its thresholds were calibrated on them).
"""

from __future__ import annotations

import argparse
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from instruct_ipt.data.degradations import DEGRADATIONS, composite_tasks, is_composite, make_degradation
from instruct_ipt.data.images import list_images, read_rgb
from instruct_ipt.data.validation import center_crop
from instruct_ipt.eval.metrics import psnr
from instruct_ipt.eval.protocol import Protocol
from instruct_ipt.instruct import order_tasks
from instruct_ipt.instruct.blind import DegradationClassifier
from instruct_ipt.pipeline import RestorationPipeline

DEFAULT_COMPOSITES = ("rain+noise", "haze+noise", "snow+noise", "haze+rain", "blur+noise")


def benchmark_cases(tasks: list[str], composites: list[str] | None) -> list[tuple[str, str | None]]:
    """(label, spec) per case: each task alone, each composite, and the clean photo (spec None)."""
    return ([(t, t) for t in tasks] + [(make_degradation(c).task, c) for c in (composites or DEFAULT_COMPOSITES)]
            + [("clean", None)])


def degraded(photos: list[np.ndarray], label: str, spec: str | None, seeds: int) -> Iterator[np.ndarray]:
    """Each photo degraded by ``spec`` once per seed (the photo itself for the clean case), seeded by
    (seed, case label, the photo's position): the same images for every classifier and every run."""
    for image, _ in degraded_pairs(photos, label, spec, seeds):
        yield image


def degraded_pairs(photos: list[np.ndarray], label: str, spec: str | None, seeds: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """:func:`degraded`'s images, each with its clean photo."""
    for seed in range(seeds):
        for i, clean in enumerate(photos):
            rng = np.random.default_rng((seed, zlib.crc32(label.encode()), i))
            yield (clean if spec is None else make_degradation(spec)(clean, rng).image), clean


def shifted(image: np.ndarray, index: int) -> np.ndarray:
    """``image`` cropped by (``index`` * 3 mod 8) px from the top and 1 + ``index`` mod 7 px from the left:
    the JPEG block grid's phase as a crop after saving leaves it (never the grid of the image itself)."""
    return image[(3 * index) % 8 :, 1 + index % 7 :]


def _tally(seen: list[str], expected: set[str], wrong: Counter[str]) -> bool:
    """Whether ``seen`` is exactly ``expected``; if not, counts what was seen ("nothing" for none) in ``wrong``."""
    if set(seen) == expected:
        return True
    wrong["+".join(seen) or "nothing"] += 1
    return False


def _counts(right: int, n: int, wrong: Counter[str]) -> str:
    """``right/n``, then what the wrong images were seen as, most frequent first."""
    mistakes = ", ".join(f"{key} x{m}" for key, m in wrong.most_common())
    return f"{right}/{n}" + (f" (saw {mistakes})" if mistakes else "")


class Restorations:
    """Each image restored with a set of tasks at most once (two classifiers that agree, or agree with
    the named tasks, cost one restoration), scored against the clean photo."""

    def __init__(self, run, clean: np.ndarray, image: np.ndarray):
        self.run, self.clean, self.image = run, clean, image
        self.done: dict[tuple[str, ...], float] = {}

    def psnr(self, tasks: list[str]) -> float:
        """PSNR (RGB, dB) of ``image`` restored with ``tasks`` in that order (none: the image itself),
        measured as ``eval`` does by default (:class:`Protocol`: clamped, 8-bit); ``inf`` when it equals
        the clean photo."""
        key = tuple(tasks)
        if key not in self.done:
            out = self.run(self.image, list(tasks)) if tasks else self.image
            self.done[key] = psnr(Protocol().prepare_output(out), self.clean)  # (no SSIM: not printed)
        return self.done[key]


def db_cell(values: list[float]) -> str:
    """Mean PSNR of ``values``; images left identical to the clean photo (``inf``: a clean photo left
    alone) are counted, not averaged."""
    finite = [v for v in values if np.isfinite(v)]
    same = len(values) - len(finite)
    if not finite:
        return f"unchanged {same}/{len(values)}"
    mean = f"{np.mean(finite):.2f}"
    return f"{mean} (unchanged {same}/{len(values)}, the others)" if same else mean


def crop_size(text: str) -> tuple[int, int]:
    """``--crop``'s value, ``WxH`` (``512x384``) or one side (``384``: a square), as (width, height)."""
    try:
        w, h = (int(v) for v in (text.split("x") if "x" in text else (text, text)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: WxH in pixels (512x384) or one side (384)") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: sides of at least 1 px")
    return w, h


def read_photos(files: list[Path], crop: tuple[int, int] | None) -> list[np.ndarray]:
    """The clean photos, each centre-cropped to ``crop`` (width, height; a side longer than the photo's
    keeps the photo's) when given: the size of the images a user hands blind mode changes what its
    grid of crops sees."""
    return [read_rgb(f) if crop is None else center_crop(read_rgb(f), crop[::-1]) for f in files]


def add_image_arguments(ap: argparse.ArgumentParser) -> None:
    """The arguments that choose the images and classifiers (shared with blind_walks.py, which must make the same images)."""
    ap.add_argument("--val", action="append", required=True, help="folder of clean photos, or one photo (repeatable)")
    ap.add_argument("--classifier", action="append", help="classifier file (repeatable; default: the packaged one)")
    ap.add_argument("--seeds", type=int, default=1, help="degraded versions of each photo per case")
    ap.add_argument("--composite", action="append", help=f"composite cases (default: {', '.join(DEFAULT_COMPOSITES)})")
    ap.add_argument("--crop", type=crop_size, help="centre-crop each photo to WxH (e.g. 512x384) or a square side before degrading")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_image_arguments(ap)
    ap.add_argument("--tile", type=int, default=256, help="side of the tiles classified alone (0: none - each tile peels, the slow part)")
    ap.add_argument("--model", help="restoration model folder for classifiers that peel and for --pixels (default: the shipped model)")
    ap.add_argument("--pixels", action="store_true",
                    help="also restore each image with each classifier's tasks and with the right ones: mean PSNR per case")
    args = ap.parse_args()
    if args.tile < 0:
        raise SystemExit(f"--tile {args.tile}: a side in pixels, or 0 for no tiles")
    names = args.classifier or ["packaged"]
    clfs = [DegradationClassifier.default() if n == "packaged" else DegradationClassifier.load(n) for n in names]
    restore = pipe = None
    if args.pixels or any(c.peeling for c in clfs):
        pipe = RestorationPipeline.from_pretrained(args.model) if args.model else RestorationPipeline.from_pretrained()
        missing = sorted({t for c in clfs if c.peeling or args.pixels for t in c.tasks} - set(pipe.tasks))
        if missing:
            raise SystemExit(f"the restoration model lacks {', '.join(missing)}: blind mode restores with each of the classifiers' tasks")
        restore = lambda x, t: pipe.run(x, [t])
    tasks = [t for t in DEGRADATIONS if t in clfs[0].tasks]
    files = [f for v in map(Path, args.val) for f in (list_images(v) if v.is_dir() else [v])]
    photos = read_photos(files, args.crop)
    cases = benchmark_cases(tasks, args.composite)
    for n, c in zip(names, clfs):
        kind = "multi-label, thresholds " + ", ".join(f"{t} {v:.2f}" for t, v in c.thresholds.items()) if c.multilabel else "single-label"
        kind += ", with a clean class" if c.clean_class else ""
        kind += ", crops on the JPEG block grid" if c.align_blocks else ""
        kind += f", at least {c.min_positions} crops per side" if c.min_positions > 1 else ""
        if c.peeling:
            gate = "" if c.peeling.clean is None else f", clean {c.peeling.clean:.3f}"
            start = ", start " + ", ".join(f"{t} {v:.2f}" for t, v in c.peeling.start.items()) if c.peeling.start else ""
            first = ("; first change " + ", ".join(f"{t} {v:.4f}" for t, v in c.peeling.first_change.items())
                     if c.peeling.first_change else "")
            suggest = ("; suggest " + ", ".join(f"{t} {v:.4f}" for t, v in c.peeling.suggest.items())
                       if c.peeling.suggest else "")
            kind += (f", peeling (region {c.peeling.region}{start}{gate}; further "
                     + ", ".join(f"{t} {v:.3f}" for t, v in c.peeling.further.items()) + first + suggest + ")")
        print(f"classifier {n}: {kind}")
    size = f", centre-cropped to {args.crop[0]}x{args.crop[1]}" if args.crop else ""
    print(f"photos: {len(photos)} ({', '.join(f.name for f in files)}){size}, {args.seeds} degraded version(s) each per case")
    print(f"| case | {' | '.join(names)} |")
    print(f"| --- |{' --- |' * len(names)}")
    totals = {"single": np.zeros((len(clfs), 2), int), "composite": np.zeros((len(clfs), 2), int)}
    tiles = np.zeros((len(clfs), 2), int)
    tile_rows: list[str] = []  # per single degradation: tiles right, and what the wrong ones were seen as
    db_rows: list[str] = []  # --pixels: per case, mean PSNR of the input, the named tasks and each classifier's
    db_groups: dict[str, list[list[float]]] = {g: [[] for _ in range(len(clfs) + 2)] for g in ("single", "composite")}
    seconds = np.zeros(len(clfs))
    images = 0
    for label, spec in cases:
        expected = set() if spec is None else set(composite_tasks(spec)) if is_composite(spec) else {spec}
        ok = np.zeros(len(clfs), int)
        n = 0
        wrong: list[Counter[str]] = [Counter() for _ in clfs]
        tile_ok, tile_n = np.zeros(len(clfs), int), 0
        tile_wrong: list[Counter[str]] = [Counter() for _ in clfs]
        dbs: list[list[float]] = [[] for _ in range(len(clfs) + 2)]  # input, named, each classifier
        for image, clean in degraded_pairs(photos, label, spec, args.seeds):
            n += 1
            scored = Restorations(pipe.run, clean, image) if args.pixels else None
            if scored:
                dbs[0].append(scored.psnr([]))
                dbs[1].append(scored.psnr(order_tasks(sorted(expected))))
            images += 1
            h, w = image.shape[:2]
            side = args.tile if spec in tasks else 0  # single degradations: each tile alone too
            corners = [(r, c) for r in range(0, h - side + 1, side) for c in range(0, w - side + 1, side)] if side else []
            tile_n += len(corners)
            for k, clf in enumerate(clfs):
                t0 = time.perf_counter()
                seen = [t for t, _ in clf.detect(image, restore=restore)]
                seconds[k] += time.perf_counter() - t0
                ok[k] += _tally(seen, expected, wrong[k])
                if scored:
                    dbs[2 + k].append(scored.psnr(seen))
                for r, c in corners:
                    tile_seen = [t for t, _ in clf.detect(image[r : r + side, c : c + side], None, restore)]
                    tile_ok[k] += _tally(tile_seen, expected, tile_wrong[k])
        print(f"| {label} | {' | '.join(_counts(ok[k], n, wrong[k]) for k in range(len(clfs)))} |")
        if tile_n:
            tiles[:, 0] += tile_ok
            tiles[:, 1] += tile_n
            tile_rows.append(f"| {label}, tiles | {' | '.join(_counts(tile_ok[k], tile_n, tile_wrong[k]) for k in range(len(clfs)))} |")
        group = "single" if spec in tasks else "composite" if spec else None
        if group:
            totals[group][:, 0] += ok
            totals[group][:, 1] += n
        if args.pixels:
            db_rows.append(f"| {label} | {' | '.join(db_cell(v) for v in dbs)} |")
            if group:
                for acc, v in zip(db_groups[group], dbs):
                    acc.extend(v)
    if "jpeg" in tasks:  # the same JPEG images, cropped: the block grid shifted
        ok, wrong = np.zeros(len(clfs), int), [Counter() for _ in clfs]
        images_shifted = [shifted(image, i) for i, image in enumerate(degraded(photos, "jpeg", "jpeg", args.seeds))]
        for k, clf in enumerate(clfs):
            for image in images_shifted:
                ok[k] += _tally([t for t, _ in clf.detect(image, restore=restore)], {"jpeg"}, wrong[k])
        print(f"| jpeg, cropped (block grid shifted) | {' | '.join(_counts(ok[k], len(images_shifted), wrong[k]) for k in range(len(clfs)))} |")
    for group, tot in totals.items():
        print(f"| all {group} | {' | '.join(f'{a}/{b} = {100 * a / max(1, b):.1f}%' for a, b in tot)} |")
    for row in tile_rows:
        print(row)
    if args.tile:
        print(f"| single, {args.tile} px tiles alone | {' | '.join(f'{a}/{b} = {100 * a / max(1, b):.1f}%' for a, b in tiles)} |")
    print(f"| s/image (whole photo) | {' | '.join(f'{t / max(1, images):.2f}' for t in seconds)} |")
    if args.pixels:
        print("\nmean PSNR (RGB, dB) against the clean photo: the degraded input, the right tasks named, each classifier's blind mode")
        print(f"| case | input | named | {' | '.join(names)} |")
        print(f"| --- |{' --- |' * (len(names) + 2)}")
        for row in db_rows:
            print(row)
        for group, values in db_groups.items():
            if values[0]:
                print(f"| all {group} | {' | '.join(db_cell(v) for v in values)} |")


if __name__ == "__main__":
    main()
