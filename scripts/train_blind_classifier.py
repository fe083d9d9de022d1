"""Train the blind-mode degradation classifier shipped with the package.

    python scripts/train_blind_classifier.py --photos ../shared/photos/train [--steps 1500] [--exclude NAME ...]

Writes src/instruct_ipt/weights/default/degradation_classifier.safetensors (or --out). Training photos:
the given folders (less any ``--exclude``d photo, by file name, kept for testing) plus
scikit-image's bundled photos; degradations: each task's default operator, applied as in
``BlindDataset`` (photos rescaled, crops sometimes softened before degrading).

``--multilabel`` trains one score per task (a share of the crops clean, a share with two
degradations) and then calibrates each task's threshold on the ``--exclude``d photos, degraded
``--calibration-seeds`` times each: clean, with each degradation, and with each pair of them.
With ``--primary packaged`` the shipped single-label classifier is kept inside the new file and names
the main degradation (``DegradationClassifier.attach_primary``); both threshold sets are calibrated.

``--clean-class`` trains a single-label classifier with one more class, clean ("nothing to do"),
from ``--clean-share`` clean crops; ``--init`` with a classifier without one keeps its features and
task scores. ``--tone S`` renders that share of the photos otherwise (exposure, tone curve, colour
balance, saturation) before degrading them (``BlindDataset``'s ``tone``; tried, not shipped).
``--downsamplings N`` gives a new classifier N stride-2 convolutions (3, the shipped; 4 and 5 see
35 and 67 px instead of 19: ``DegradationClassifier``'s ``downsamplings``; tried, not shipped).
``--width W`` gives a new classifier W channels at full resolution (default 32), twice and four times
that after its stride-2 convolutions (``DegradationClassifier``'s ``width``).

``--peel FILE`` (a single-label classifier, or ``packaged``) trains nothing: it calibrates that
classifier's :class:`~instruct_ipt.instruct.blind.Peeling` thresholds with the restoration model
``--model`` (default: the shipped one) on the ``--exclude``d photos, as above, and writes --out;
``--further TASK`` limits the tasks named after the first, ``--first TASK`` asks the first task, too,
to change the crop by a calibrated amount (``Peeling.first_change``), ``--no-gate`` always names the first
(with a clean class: unless clean is the most likely class); ``--suggest TASK`` (not a ``--further``
one) is not run after the first but suggested to the user when the calibration, allowed to name it,
would (``Peeling.suggest``); ``--jpeg-blocks`` names JPEG only where the image shows its 8 x 8
block grid, at a strength calibrated on the same images (``Peeling.blocks``). A classifier with a clean class is
gated by its clean probability (one calibrated threshold) instead of per-task start thresholds.
``--align-blocks`` makes the written classifier start its crops on the image's JPEG block grid
(``DegradationClassifier.align_blocks``); with ``--peel``, the calibration is walked that way. A
trained classifier does not take it from its ``--init`` file (so the commands in
docs/instructions.md still make the files they measured): give it again. ``--min-positions N``
likewise: at least N crops along each side of an image larger than one crop
(``DegradationClassifier.min_positions``; default: the file's own with ``--peel``, else 1).
``--keep-choices`` asks what the ``--peel`` file's own peeling asked (its further, first-change
and suggested tasks, its gate, block-grid test and region): with ``--model``, the same blind mode calibrated for
another restoration model. The file written records the model it was calibrated with
(``Peeling.model``); blind mode warns when it peels with another one.
``--walks FILE`` keeps the calibration walks (the restorations: most of the time) in FILE, and a
later ``--peel`` run with the same classifier, model, photos and seeds reads them back instead, so
another ``--further`` or ``--no-gate`` choice takes seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

from skimage import data as skdata

from instruct_ipt.data.degradations import DEGRADATIONS, make_degradation
from instruct_ipt.data.images import list_images, read_rgb
from instruct_ipt.data.synthetic import load_clean_images
from instruct_ipt.instruct.blind import (
    PEEL_REGION,
    DegradationClassifier,
    calibrate_thresholds,
    calibration_cases,
    check_peeling_settings,
    choose_peeling,
    load_walks,
    peel_walks,
    save_walks,
    suggestion_outcomes,
    train_classifier,
    walked_sets,
    walked_suggestions,
)
from instruct_ipt.io import state_digest, weights_digest
from instruct_ipt.pipeline import RestorationPipeline
from instruct_ipt.train.trainer import SKIMAGE_PHOTOS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", action="append", default=[])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="src/instruct_ipt/weights/default/degradation_classifier.safetensors")
    ap.add_argument("--init", help="continue from this classifier file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--exclude", action="append", default=[], help="leave out this photo (file name)")
    ap.add_argument("--soften", type=float, default=0.3, help="share of samples softened before degrading")
    ap.add_argument("--tone", type=float, default=0.0, help="share of photos first given another exposure, tone curve, "
                    "colour balance and saturation (BlindDataset's tone)")
    ap.add_argument("--context", type=int, default=96, help="square degraded as a whole (>= the 96 px patch)")
    ap.add_argument("--downsamplings", type=int, choices=range(1, 6), metavar="N", help="stride-2 convolutions of a "
                    "new classifier, 1-5 (default: 3, the shipped one's; with --init, the init's)")
    ap.add_argument("--width", type=int, metavar="W", help="channels at full resolution of a new classifier "
                    "(default 32; with --init, the init's)")
    ap.add_argument("--multilabel", action="store_true", help="one score per task, thresholds calibrated on the left-out photos")
    ap.add_argument("--clean-class", action="store_true", help="single-label with one more class, clean "
                    "('nothing to do'), learnt from --clean-share clean crops")
    ap.add_argument("--clean-share", type=float, help="with --multilabel or --clean-class: share of clean crops (default 0.15)")
    ap.add_argument("--composite-share", type=float, help="with --multilabel: share of crops with two degradations "
                    "(default 0.35)")
    ap.add_argument("--calibration-seeds", type=int, default=2, help="degraded versions of each left-out photo for calibration")
    ap.add_argument("--recalibrate", metavar="FILE", help="with --multilabel: no training; load this multi-label "
                    "classifier, attach --primary if given, calibrate on the left-out photos and write --out")
    ap.add_argument("--primary", help="with --multilabel: a single-label classifier file (or 'packaged') that names the "
                    "main degradation; the multi-label scores then decide whether anything is there and add the others")
    ap.add_argument("--singles-first", action="store_true", help="with --multilabel: calibrate so that photos with one "
                    "degradation come first (none of them traded for a pair or a clean photo)")
    ap.add_argument("--peel", metavar="FILE", help="no training: calibrate peeling (blind mode naming several degradations "
                    "with the restoration model's help) for this single-label classifier (or 'packaged') and write --out")
    ap.add_argument("--model", help="with --peel: the restoration model folder (default: the shipped model)")
    ap.add_argument("--region", type=int, help=f"with --peel: side of the central crop peeling restores (default {PEEL_REGION})")
    ap.add_argument("--further", action="append", help="with --peel: a task that may be named after the first "
                    "(repeatable; default: every task)")
    ap.add_argument("--first", action="append", default=[], help="with --peel: a task whose removal must change the "
                    "central crop by a calibrated amount when it comes first, else 'nothing to do' (repeatable)")
    ap.add_argument("--suggest", action="append", default=[], help="with --peel and --further: a task not run after "
                    "the first but suggested ('possibly also ...') when naming it would pass the calibrated test (repeatable)")
    ap.add_argument("--walks", metavar="FILE", help="with --peel: the calibration walks' file (.npz), written on the "
                    "first run and read back by a later one with the same classifier, model, photos and seeds")
    ap.add_argument("--align-blocks", action="store_true", help="the classifier written starts its crops on the "
                    "image's JPEG block grid (with --peel: calibrated so)")
    ap.add_argument("--min-positions", type=int, choices=range(1, 5), metavar="N", help="the classifier written puts at "
                    "least N crops (1-4) along each side of an image larger than one crop (default: the --peel file's own, else 1)")
    ap.add_argument("--no-gate", action="store_true", help="with --peel: no calibrated 'nothing to do' (the main task "
                    "is always named; with a clean class, unless clean is the most likely class)")
    ap.add_argument("--jpeg-blocks", action="store_true", help="with --peel: name JPEG only where the image shows "
                    "its 8 x 8 block grid, at a calibrated strength")
    ap.add_argument("--keep-choices", action="store_true", help="with --peel: ask the calibration what the --peel "
                    "file's own peeling asked (its further, first-change and suggested tasks, gate, region): the same "
                    "blind mode, calibrated for another restoration model (--model)")
    args = ap.parse_args()
    packaged = Path(__file__).resolve().parents[1] / "src/instruct_ipt/weights/default/degradation_classifier.safetensors"
    reads = [Path(f) for f in (args.init, args.recalibrate) if f]
    for name in (args.primary, args.peel):
        if name:
            reads.append(packaged if name == "packaged" else Path(name))
    if any(Path(args.out).resolve() == r.resolve() for r in reads):
        raise SystemExit(f"--out {args.out} is a file this run reads: write the new classifier elsewhere")
    if args.clean_class and args.multilabel:
        raise SystemExit("--clean-class is a single-label classifier's: not with --multilabel")
    if args.composite_share is not None and not args.multilabel:
        raise SystemExit("--composite-share goes with --multilabel (a single-label classifier trains on one degradation a crop)")
    if args.clean_share is not None and not (args.multilabel or args.clean_class):
        raise SystemExit("--clean-share goes with --multilabel or --clean-class")
    clean_share = 0.15 if args.clean_share is None else args.clean_share
    composite_share = 0.35 if args.composite_share is None else args.composite_share
    if args.singles_first and not args.multilabel:
        raise SystemExit("--singles-first calibrates a multi-label classifier's thresholds: add --multilabel")
    if (args.multilabel or args.peel) and not args.exclude:
        raise SystemExit("--multilabel and --peel calibrate thresholds on left-out photos: give them with --exclude")
    if args.peel and (args.multilabel or args.init or args.recalibrate or args.clean_class or args.tone or args.downsamplings
                      or args.width):
        raise SystemExit("--peel calibrates a single-label classifier without training: not with --multilabel, --init, "
                         "--recalibrate, --clean-class, --tone, --downsamplings or --width")
    if args.recalibrate and (args.downsamplings or args.width or args.init or args.tone or args.clean_class
                             or args.clean_share is not None or args.composite_share is not None):
        raise SystemExit("--recalibrate trains nothing: not with --downsamplings, --width, --init, --tone, --clean-class, "
                         "--clean-share or --composite-share")
    if not args.peel and (args.further or args.first or args.suggest or args.no_gate or args.jpeg_blocks or args.model or args.walks
                          or args.keep_choices or args.region):
        raise SystemExit("--further, --first, --suggest, --no-gate, --jpeg-blocks, --keep-choices, --region, --model "
                         "and --walks go with --peel")
    if args.keep_choices and (args.further or args.first or args.suggest or args.no_gate or args.jpeg_blocks or args.region):
        raise SystemExit("--keep-choices takes the --peel file's further, first-change and suggested tasks, gate, "
                         "block-grid test and region: not with --further, --first, --suggest, --no-gate, --jpeg-blocks or --region")
    for flag, named in (("--further", args.further or []), ("--first", args.first), ("--suggest", args.suggest)):
        unknown_tasks = sorted(set(named) - set(DEGRADATIONS))
        if unknown_tasks:
            raise SystemExit(f"{flag} {', '.join(unknown_tasks)}: not a task; choose among {', '.join(DEGRADATIONS)}")
    files = [f for p in map(Path, args.photos) for f in (list_images(p) if p.is_dir() else [p])]
    unknown = set(args.exclude) - {f.name for f in files}
    if unknown:
        raise SystemExit(f"--exclude names no given photo: {', '.join(sorted(unknown))}")
    if args.peel:
        calibrate_peel(args, [f for f in files if f.name in args.exclude])
        return
    files = [f for f in files if f.name not in args.exclude]
    if not args.recalibrate:  # (recalibrating reads the left-out photos only)
        print(f"training photos: {len(files)} files (+{len(SKIMAGE_PHOTOS)} scikit-image); left out: "
              f"{', '.join(args.exclude) or 'none'}")
    images = [] if args.recalibrate else load_clean_images([*files, *(getattr(skdata, n)() for n in SKIMAGE_PHOTOS)])
    ops = {t: make_degradation(t) for t in DEGRADATIONS}
    t0 = time.time()
    if args.recalibrate:
        model = DegradationClassifier.load(args.recalibrate)
        if not (args.multilabel and model.multilabel):
            raise SystemExit("--recalibrate takes a multi-label classifier, with --multilabel")
        if args.primary:  # replaced below; else the file's own primary stays
            model.primary, model.extra_thresholds = None, {}
    else:
        init = DegradationClassifier.load(args.init) if args.init else None
        if init is not None and args.downsamplings and args.downsamplings != init.downsamplings:
            raise SystemExit(f"--init {args.init} has {init.downsamplings} downsamplings: not --downsamplings {args.downsamplings}")
        if init is not None and args.width and args.width != init.width:
            raise SystemExit(f"--init {args.init} has width {init.width}: not --width {args.width}")
        shares = ({"clean_share": clean_share, "composite_share": composite_share} if args.multilabel
                  else {"clean_share": clean_share, "clean_class": True} if args.clean_class else {})
        model = train_classifier(images, ops, steps=args.steps, batch_size=args.batch, workers=args.workers,
                                 log=lambda m: print(m, flush=True), init=init, seed=args.seed, lr=args.lr,
                                 soften=args.soften, context=args.context, multilabel=args.multilabel, tone=args.tone,
                                 downsamplings=args.downsamplings, width=args.width, **shares)
    model.align_blocks = model.align_blocks or args.align_blocks
    model.min_positions = args.min_positions or model.min_positions
    if args.multilabel:
        if args.primary:
            model.attach_primary(DegradationClassifier.default() if args.primary == "packaged"
                                 else DegradationClassifier.load(args.primary))
        held_out = [read_rgb(f) for p in map(Path, args.photos) for f in (list_images(p) if p.is_dir() else [p])
                    if f.name in args.exclude]
        print(f"calibrating on {len(held_out)} left-out photos x {args.calibration_seeds} seeds", flush=True)
        print("thresholds:", calibrate_thresholds(model, calibration_cases(held_out, list(ops), args.calibration_seeds),
                                                     singles_first=args.singles_first))
        if model.primary is not None:
            print("extra thresholds:", model.extra_thresholds)
    model.save(args.out)
    done = "recalibrated" if args.recalibrate else f"trained on {len(images)} photos"
    print(f"{done} in {time.time() - t0:.0f} s; wrote {args.out}")


def calibrate_peel(args: argparse.Namespace, left_out: list[Path]) -> None:
    """``--peel``: the classifier's peeling thresholds, calibrated with the restoration model on the left-out photos."""
    t0 = time.time()
    model = DegradationClassifier.default() if args.peel == "packaged" else DegradationClassifier.load(args.peel)
    if model.multilabel:
        raise SystemExit(f"--peel {args.peel}: a multi-label classifier; peeling needs a single-label one")
    model.align_blocks = model.align_blocks or args.align_blocks
    model.min_positions = args.min_positions or model.min_positions
    if args.keep_choices:
        if model.peeling is None:
            raise SystemExit(f"--keep-choices: {args.peel} has no peeling whose choices to keep")
        choices = model.peeling.choices()
        print("choices kept from the --peel file:", json.dumps(choices))
    else:
        choices = {"further_tasks": args.further, "first_tasks": args.first, "suggest_tasks": args.suggest,
                   "gate": not args.no_gate, "jpeg_blocks": args.jpeg_blocks, "region": args.region or PEEL_REGION}
    args.region = choices["region"]  # (the walks' key)
    pipe = RestorationPipeline.from_pretrained(args.model) if args.model else RestorationPipeline.from_pretrained()
    missing = sorted(set(model.tasks) - set(pipe.tasks))
    if missing:
        raise SystemExit(f"the restoration model lacks {', '.join(missing)}: peeling restores with every task the classifier knows")
    try:
        check_peeling_settings(model, args.region, choices.get("max_tasks", 2), choices["further_tasks"],
                               choices["first_tasks"], choices["suggest_tasks"], choices["jpeg_blocks"])
    except ValueError as e:
        raise SystemExit(f"--peel {args.peel}: {e}") from None
    held_out = [read_rgb(f) for f in left_out]
    key = walks_key(args, model, pipe, left_out) if args.walks else None
    print(f"calibrating peeling on {len(held_out)} left-out photos x {args.calibration_seeds} seeds", flush=True)
    try:
        if args.walks and Path(args.walks).exists():
            walks = load_walks(args.walks, key)
            print(f"walks read from {args.walks}")
        else:
            cases = calibration_cases(held_out, list(model.tasks), args.calibration_seeds)
            walks = peel_walks(model, cases, lambda x, t: pipe.run(x, [t]), args.region)
            if args.walks:
                save_walks(args.walks, walks, key)
                print(f"walks written to {args.walks}")
        peeling = choose_peeling(model, walks, **choices, model=weights_digest(pipe.model))
    except ValueError as e:  # a walks file for something else
        raise SystemExit(str(e)) from None
    if peeling.clean is not None:
        print(f"clean threshold (probability): {peeling.clean:.4f}")
    else:
        print("start thresholds (probability):", {t: round(v, 4) for t, v in peeling.start.items()} or "none, always acts")
    print("further thresholds (change, RMS):", {t: round(v, 4) for t, v in peeling.further.items()})
    if peeling.blocks is not None:
        print(f"block-grid threshold for jpeg (strength): {peeling.blocks:.4f}")
    if choices["first_tasks"]:
        print("first-change thresholds (change, RMS):", {t: round(v, 4) for t, v in peeling.first_change.items()} or "none")
    named = walked_sets(model, walks)
    right = (named == walks["present"]).all(1)
    count = walks["present"].sum(1)
    print("calibration images named exactly:", ", ".join(f"{what} {right[count == n].sum()}/{(count == n).sum()}"
                                                          for n, what in ((0, "clean"), (1, "one degradation"), (2, "two"))))
    if choices["suggest_tasks"]:
        print("suggest thresholds (change, RMS):", {t: round(v, 4) for t, v in peeling.suggest.items()} or "none")
        good, bad = suggestion_outcomes(walked_suggestions(model, walks), named, walks["present"])
        print(f"calibration images with a suggestion: {(good | bad).sum()} of {len(good)} ({good.sum()} right: "
              f"there and not run; {bad.sum()} wrong)")
    model.save(args.out)
    print(f"calibrated in {time.time() - t0:.0f} s; wrote {args.out}")


def walks_key(args: argparse.Namespace, model: DegradationClassifier, pipe: RestorationPipeline, left_out: list[Path]) -> str:
    """What the walks depend on (the classifier's and the restoration model's weights, how it places
    its crops - ``grid_key`` -, the photos' files, the seeds, the region), as one string: a
    walks file made for anything else is refused."""
    # (a list, not a dict by name: --photos may name an x.png in two folders)
    photos = [[f.name, hashlib.sha256(f.read_bytes()).hexdigest()] for f in sorted(left_out)]
    return json.dumps({"classifier": state_digest(model.state_dict()), "tasks": list(model.tasks),
                       "model": state_digest(pipe.model.state_dict()),
                       "photos": photos, "seeds": args.calibration_seeds, "region": args.region} | model.grid_key(), sort_keys=True)


if __name__ == "__main__":
    main()
