"""Command-line interface: ``instruct-ipt <command>``."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import torch

from .version import __version__


def _device_line() -> str:
    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} visible)"
    return "cpu (CUDA not available)"


def cmd_info(args: argparse.Namespace) -> int:
    from .model import DEFAULT_MODEL_NAME, InstructIPT, resolve_model_dir
    from .models import IPTConfig
    from .modulation import ModulationConfig

    describe_config = args.size is not None or args.tasks or args.plain or args.adaptation
    if args.model and describe_config:
        raise ValueError("give --model, or a config to describe (--size, --tasks, --plain, --adaptation), not both")
    if describe_config:
        from .adaptation import AdaptationConfig

        size = args.size or "small"
        tasks = args.tasks.split(",") if args.tasks else None
        plain = args.plain or args.adaptation is not None
        mod = None if plain else ModulationConfig(rank=args.rank, strategy=args.strategy, proportion=args.proportion,
                                                  kind=args.modulation_kind)
        adaptation = None if args.adaptation is None else AdaptationConfig(kind=args.adaptation)
        kwargs = {} if tasks is None else {"tasks": tasks}
        # encode_text=False: the counts are the same without encoding the tasks' phrasings
        model = InstructIPT(IPTConfig.named(size), modulation=mod, adaptation=adaptation, encode_text=False, **kwargs)
        source = f"config '{size}' (untrained)"
    else:
        model = InstructIPT.from_pretrained(args.model)
        source = f"saved model {resolve_model_dir(args.model)}" + (" (the shipped default)" if args.model in (None, DEFAULT_MODEL_NAME) else "")
    count = model.parameter_count()
    info = {
        "version": __version__,
        "torch": torch.__version__,
        "device": _device_line(),
        "model": source,
        **model.summary(macs=args.macs),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"instruct-ipt {__version__} | torch {torch.__version__} | device: {info['device']}")
    print(f"model: {source}")
    print(f"tasks ({len(model.tasks)}): {', '.join(model.tasks)}")
    if model.adaptation_config is not None:
        a = model.adaptation_config
        vectors = f", {a.instruction} task vectors" if a.conditioned else ", prompts from the features (no task input)"
        print(f"feature adaptation: {a.kind}{vectors}; {count.adaptation:,} parameters shared by all tasks "
              f"({100 * count.adaptation / count.backbone:.2f}% of the backbone)")
    elif model.modulation_config is None:
        print("modulation: none (plain backbone shared by all tasks)")
    else:
        m = model.modulation_config
        if m.kind == "replace":
            print(f"modulation: weight replacement (a full weight per task) on {count.layers} layers")
        else:
            rank = f"rank {m.rank}" if m.strategy == "constant" else f"proportion {m.proportion}"
            print(f"modulation: {m.strategy} {rank} on {count.layers} layers")
    print(f"backbone parameters:       {count.backbone:,}")
    print(f"extra parameters per task: {count.per_task:,} ({100 * count.share:.2f}% of the backbone)")
    print(f"extra parameters, all {count.tasks} tasks: {count.per_task * count.tasks:,}")
    if args.macs:
        how = "with the adaptation's modules" if model.adaptation is not None else "merged: same as the backbone"
        print(f"MACs at {args.macs}x{args.macs}: {info[f'gmacs_at_{args.macs}']} G ({how})")
    return 0


def _crop(text: str) -> int | tuple[int, int]:
    """``--crop``: one side (``384``: a square; 0: the whole image) or ``WxH`` (``512x384``, the
    size of a phone photo's crop), as ``eval`` takes it."""
    try:
        sides = [int(v) for v in text.lower().split("x")]
    except ValueError:
        sides = []
    if len(sides) == 1 and sides[0] >= 0:
        return sides[0]
    if len(sides) == 2 and min(sides) >= 1:
        return sides[0], sides[1]
    raise argparse.ArgumentTypeError(f"{text!r}: one side in pixels (384; 0 for the whole image) or WxH (512x384)")


def _protocol_changes(args: argparse.Namespace) -> dict:
    """The protocol fields ``eval``'s flags change in every task's default protocol."""
    changes = {}
    if args.channel:
        changes["channel"] = args.channel
    if args.crop_border is not None:
        changes["crop_border"] = args.crop_border
    if args.no_clamp:
        changes["clamp"] = False
    if args.no_quantize:
        changes["quantize"] = False
    if args.test_noise:
        changes["test_noise"] = args.test_noise
    return changes


def cmd_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .eval.plan import EvalRequest, plan_eval, results_meta
    from .eval.runner import (
        Skip,
        blind_method,
        composite_methods,
        describe_named,
        evaluate,
        format_table,
        summarise,
        write_results,
    )
    from .inference import pick_device, restore_array
    from .pipeline import RestorationPipeline

    if not args.data and not args.photos:
        raise ValueError("give a benchmark folder (--data) or a folder of clean photos (--photos)")
    if args.model is None and not args.peers:
        raise ValueError("nothing to evaluate: give --model DIR and/or --peers")
    if args.blind and args.model is None:
        raise ValueError("--blind restores with a model's blind mode: give --model DIR")
    request = EvalRequest(
        data=tuple(args.data or ()), task=args.task, photos=args.photos, tasks=args.tasks.split(",") if args.tasks else None,
        sigma=args.sigma, seed=args.seed, crop=args.crop, grey=args.grey, protocol=_protocol_changes(args),
        composites=tuple(args.composite or ()),
    )
    pipe = RestorationPipeline.from_pretrained(args.model, device=args.device) if args.model else None
    model = pipe.model if pipe else None  # (the pipeline: a composite's sequence and blind rows)
    plan = plan_eval(request, None if model is None else model.tasks)
    protocols = plan.protocols

    def restore(case):  # inside model.merged(task) below: the task runs at the backbone's cost
        return restore_array(model, case.input, None if model.modulated else case.task)

    def on_skip(s: Skip) -> None:
        tqdm.write(f"instruct-ipt eval: {s}", file=sys.stderr)

    for s in plan.skipped:
        on_skip(s)
    records, skipped = [], list(plan.skipped)
    blind_named: dict[str, dict[str, int]] = {}  # per table with a blind row: what blind mode named, how often
    for job in plan.jobs:  # each table printed as soon as its task is measured
        single = model is not None and not job.sequence  # a composite's rows merge each of its tasks in turn
        merged = model.merged(job.task) if single else contextlib.nullcontext()
        named: Counter[str] = Counter()
        if job.sequence:
            methods = composite_methods(pipe, job.sequence, named)
        else:  # blind mode beside the named task (it merges each task it runs, then merges this one again)
            methods = {"blind": blind_method(pipe, named)} if args.blind else None
        with tqdm(total=job.images, desc=f"eval {job.task}", unit="img", disable=None, file=sys.stderr, leave=False) as bar, merged:
            done, skips = evaluate(
                job.make_cases(), restore if single else None, method=args.method, protocols=protocols,
                peers=args.peers and not job.sequence, save_dir=Path(args.out) / "images" if args.save else None,
                on_skip=on_skip, progress=lambda c: bar.update(1), seam_period=args.seam_period or None,
                methods=methods,
            )
        records += done
        skipped += skips
        if done:
            print(format_table(summarise(done), protocols, setting=job.setting), end="", flush=True)
        if named:
            print(describe_named(named), flush=True)
            blind_named[job.task] = dict(named.most_common())
    rows = summarise(records)
    if not rows:
        print("instruct-ipt eval: error: no image could be evaluated", file=sys.stderr)
        return 2
    print()
    meta = results_meta(request, args.model, str(pick_device(args.device)), args.seam_period)
    if blind_named:
        meta["blind_named"] = blind_named
    json_path, csv_path = write_results(args.out, rows, records, skipped, protocols, meta)
    print(f"wrote {json_path} and {csv_path}" + (f"; restored images under {Path(args.out) / 'images'}" if args.save else ""))
    failed = [s for s in skipped if s.fatal]
    if failed:
        print(f"{len(failed)} item(s) skipped (see above)", file=sys.stderr)
        return 1
    return 0


def _resume_hint(args: argparse.Namespace, out: Path) -> str:
    """What an interrupted ``train`` left, and the command that continues it."""
    import shlex

    from .train.checkpoint import load_checkpoint

    opts = []
    for item in args.set:
        opts += ["--set", item]
    if args.out:
        opts += ["--out", args.out]
    if args.steps is not None:
        opts += ["--steps", str(args.steps)]
    if args.device != "auto":
        opts += ["--device", args.device]
    ckpt = out / "checkpoints" / "last.pt"
    if not ckpt.is_file():  # the same command again; a budget is measured again (a checkpoint would keep it)
        again = opts + (["--max-minutes", f"{args.max_minutes:g}"] if args.max_minutes is not None else [])
        return ("interrupted before the first checkpoint; nothing was saved. Start again with: "
                f"{shlex.join(['instruct-ipt', 'train', args.config, *again])}")
    state = load_checkpoint(ckpt)
    return (f"interrupted; nothing new was saved. Last checkpoint: {ckpt} (stage {state['stage']}, step {state['step']}). "
            f"Continue with: {shlex.join(['instruct-ipt', 'train', args.config, '--resume', *opts])}")


def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainingError, load_config, train
    from .train.trainer import plan_stages, with_schedule

    cfg = load_config(args.config, args.set)
    if args.out:
        cfg.out = args.out
    if args.steps is not None:
        if args.steps < 1 or args.max_minutes is not None:
            raise ValueError("--steps takes a positive number of steps, and not together with --max-minutes")
        cfg = with_schedule(cfg, [(args.steps, min(s.warmup, args.steps - 1)) for s in plan_stages(cfg)])
    try:
        train(cfg, resume=args.resume, device=args.device, progress=not args.no_progress, max_minutes=args.max_minutes)
    except TrainingError as e:
        print(f"instruct-ipt train: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback; checkpoints are atomic, so the last one is whole
        print(f"\ninstruct-ipt train: {_resume_hint(args, Path(cfg.out))}", file=sys.stderr)
        return 130
    return 0


def _load_model(path: str | None, device: str = "auto"):
    from .inference import pick_device
    from .model import InstructIPT

    return InstructIPT.from_pretrained(path, device=pick_device(device)).eval()


def cmd_interpret(args: argparse.Namespace) -> int:
    from .instruct import InstructionError, InstructionHead, Interpreter

    if args.model:
        from .pipeline import RestorationPipeline

        interp = RestorationPipeline.from_pretrained(args.model, device="cpu").interpreter
    else:
        interp = Interpreter(InstructionHead.load(args.head) if args.head else InstructionHead.default())
    try:
        result = interp(args.text)
    except InstructionError as e:
        print(f"instruct-ipt interpret: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict()))
    return 0


def _file_error(command: str, path: Path, e: Exception) -> str:
    """One file's error line, naming the file once (most errors name it already)."""
    return f"instruct-ipt {command}: {e}" if str(path) in str(e) else f"instruct-ipt {command}: {path}: {e}"


def cmd_detect(args: argparse.Namespace) -> int:
    """What blind mode sees in each image, without restoring it: seconds per photo where ``restore``
    takes minutes on a large one on a CPU (only blind mode's second look restores, on a 384 px crop)."""
    from .data.images import ImageReadError, load_image
    from .pipeline import RestorationPipeline

    files = _expand_inputs(args.inputs, "detect", sources=False)
    if not files:
        raise ValueError("no input images")
    pipe = RestorationPipeline.from_pretrained(args.model, device=args.device)
    if not set(pipe.classifier.tasks) & set(pipe.model.tasks):
        raise ValueError(f"blind mode knows none of this model's tasks ({', '.join(pipe.model.tasks)}): its classifier "
                         f"names {', '.join(pipe.classifier.tasks)} only; restore with this model by naming the task "
                         "(restore -t)")
    failures = 0
    for f in files:
        try:
            rgb = load_image(f).rgb
            choice = pipe.choose(rgb)
        except (ImageReadError, ValueError, OSError) as e:
            failures += 1
            print(_file_error("detect", f, e), file=sys.stderr)
            continue
        if args.json:
            print(json.dumps({"file": str(f), "tasks": choice.tasks, "confidences": choice.confidences,
                              "suggested": choice.suggested, "probabilities": choice.probabilities}))
        else:
            print(f"{f}: {choice.describe()}")
    if failures:
        print(f"{failures} of {len(files)} image(s) failed", file=sys.stderr)
        return 1
    return 0


def cmd_add_task(args: argparse.Namespace) -> int:
    """A task of the user's own from a folder of pairs; the logic is ``train/add_task.py``'s."""
    from .train import TrainingError
    from .train.add_task import add_task

    try:
        r = add_task(args.name, args.pairs, args.out, model=args.model, phrases=args.phrases, corpus=args.corpus, iterations=args.iterations,
                     max_minutes=args.max_minutes, patch_size=args.patch_size, batch_size=args.batch_size, lr=args.lr,
                     seed=args.seed, device=args.device, resume=args.resume, progress=not args.no_progress)
    except TrainingError as e:
        print(f"instruct-ipt add-task: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninstruct-ipt add-task: stopped; the same command with --resume continues from the last checkpoint "
              f"in {args.out}.run", file=sys.stderr)
        return 130
    if r.dropped_unsupported:
        print(f"the instruction head no longer refuses {len(r.dropped_unsupported)} request(s) that now mean {r.task}, "
              f"e.g. {', '.join(repr(t) for t in r.dropped_unsupported[:3])}")
    print(f"added task {r.task}: {r.steps} bias-only steps on {r.pairs} pairs; the instruction head knows "
          f"{len(r.phrases)} phrasings of it (held-out accuracy on the other classes {100 * r.held_out_accuracy:.1f}%, "
          f"{r.held_out_count} phrasings); wrote {r.folder}")
    print(f'try: instruct-ipt restore IMAGE -i "{r.phrases[1] if len(r.phrases) > 1 else r.phrases[0]}" --model {r.folder}')
    return 0


def cmd_train_head(args: argparse.Namespace) -> int:
    from .instruct import InstructionHead, default_encoder, held_out_accuracy, load_corpus, split, train_head
    from .instruct.corpus import UNSUPPORTED, read_phrases
    from .instruct.head import HEAD_FILE

    corpus = load_corpus(args.corpus)
    for spec in args.phrases or []:
        task, _, path = spec.partition("=")
        if not path:
            raise ValueError(f"--phrases takes TASK=FILE, got {spec!r}")
        corpus[task] = corpus.get(task, []) + read_phrases(path)
    tasks = _load_model(args.model, "cpu").tasks if args.model else [c for c in corpus if c != UNSUPPORTED]
    missing = [t for t in tasks if not corpus.get(t)]
    if missing:
        raise ValueError(f"no phrasings for task(s) {', '.join(missing)}: add them with --phrases TASK=FILE (one per line)")
    train, held = split({c: corpus[c] for c in [*tasks, UNSUPPORTED]})
    encoder = default_encoder()
    head = train_head(train, tasks, encoder, seed=args.seed)
    out = Path(args.out) if args.out else (Path(args.model) / HEAD_FILE if args.model else Path(HEAD_FILE))
    head.save(out)
    accuracy, n = held_out_accuracy(head, encoder, held)
    print(f"trained an instruction head for {', '.join(tasks)} on {sum(map(len, train.values()))} phrasings; "
          f"held-out accuracy {100 * accuracy:.1f}% ({n} phrasings); wrote {out}")
    InstructionHead.load(out)  # the file reads back
    return 0


def cmd_calibrate_blind(args: argparse.Namespace) -> int:
    """Blind mode calibrated for a model of the user's own (``RestorationPipeline.calibrate_blind_mode``),
    written into its folder, where ``restore --model`` finds it."""
    import time

    from tqdm import tqdm

    from .data.images import read_rgb
    from .instruct.blind import BLIND_FILE
    from .model import default_model_dir, resolve_model_dir
    from .pipeline import RestorationPipeline

    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds}: at least 1")
    given = _expand_inputs(args.photos, "calibrate-blind")
    files = [f for f in given if f.is_file()]
    missing = [str(f) for f in given if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"no such photo: {', '.join(missing)}")
    if not files:
        raise ValueError("--photos holds no image: give clean photos to calibrate on")
    folder = resolve_model_dir(args.model)  # where the model was read from ("default": the shipped one)
    if args.out is None and folder.resolve() == default_model_dir().resolve():
        raise ValueError(f"--model {args.model} is the shipped model, inside the installed package: give --out FILE "
                         "(or copy the model folder and calibrate the copy)")
    out = Path(args.out) if args.out else folder / BLIND_FILE
    _check_writable(out, "--out")  # before the calibration's minutes, not after
    pipe = RestorationPipeline.from_pretrained(folder, device=args.device)
    images = [read_rgb(f) for f in files]
    peeling = pipe.classifier.peeling
    if peeling is not None:  # (none: calibrate_blind_mode says so; it also refuses photos too small to judge)
        region = peeling.region
        small = [f"{f.name} ({img.shape[1]}x{img.shape[0]})" for f, img in zip(files, images) if min(img.shape[:2]) < region]
        if small:
            print(f"warning: blind mode judges a {region} px crop of each photo; these are smaller, so their "
                  f"calibration images are too: {', '.join(small)}", file=sys.stderr)
    cases = len(images) * args.seeds * (1 + len(pipe.classifier.tasks) * (len(pipe.classifier.tasks) + 1) // 2)
    print(f"calibrating blind mode for {folder} on {len(files)} photo(s) x {args.seeds} seed(s): {cases} images, "
          "two restorations each", file=sys.stderr)
    t0 = time.time()
    with tqdm(total=cases, desc="calibrate", unit="img", disable=None, file=sys.stderr, leave=False) as bar:
        peel = pipe.calibrate_blind_mode(images, seeds=args.seeds, progress=lambda done, n: bar.update(done - bar.n),
                                         names=[str(f) for f in files]).peeling
    pipe.classifier.save(out)
    def rounded(d: dict[str, float]) -> str:
        return json.dumps({t: round(v, 4) for t, v in d.items()})

    gate = f"clean {peel.clean:.4f}" if peel.clean is not None else f"start {rounded(peel.start)}"
    blocks = "" if peel.blocks is None else f"; JPEG block grid {peel.blocks:.4f}"
    print(f"thresholds: {gate}; further {rounded(peel.further)}; first change {rounded(peel.first_change)}; "
          f"suggest {rounded(peel.suggest)}{blocks}")
    print(f"calibrated in {time.time() - t0:.0f} s; wrote {out}")
    return 0


def _check_writable(path: Path, flag: str) -> None:
    """Refuse an output file that could not be written (a folder, a missing or read-only folder
    around it) before the work that makes it."""
    import os

    if path.is_dir():
        raise ValueError(f"{flag} {path}: a folder; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"{flag} {path}: no folder {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot write into {parent}")


def _say_raw_left_out(command: str, where: object, raws: list[Path]) -> None:
    """One stderr line for the camera raw files a folder or a pattern holds: left out of its images
    (a camera's RAW + JPEG pairs restore from the JPEG), with what to do to restore them."""
    if raws:
        shown = ", ".join(f.name for f in raws[:3]) + (f" and {len(raws) - 3} more" if len(raws) > 3 else "")
        print(f"instruct-ipt {command}: {where}: {len(raws)} camera raw file(s) left out ({shown}): develop them "
              "to TIFF or PNG first", file=sys.stderr)


def _expand_inputs(items: list[str], command: str, sources: bool = True) -> list[Path]:
    """The image files that ``items`` (files, folders, glob patterns) name, in order, each once.
    ``sources``: leave out what a restoration source is not - restore's own outputs
    (``NAME.restored.*``, in folders and patterns) and, in a folder, a HEIF photo beside a copy of
    another format of its name (both would make one output), said on stderr; False for a command
    that writes nothing (``detect``), which takes every image it is given."""
    import glob

    from .data.images import heif_twins, image_files, is_image_file, is_raw_file, raw_files

    def source(f: Path) -> bool:
        return not sources or ".restored." not in f.name

    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            every = image_files(p)
            twins = heif_twins(every) if sources else []  # (what list_images leaves out, said here)
            files += [f for f in every if f not in twins and source(f)]
            for twin in twins:
                print(f"instruct-ipt {command}: {twin} left out: a copy of another format has its name (give it by "
                      "name, with -o, to restore it too)", file=sys.stderr)
            _say_raw_left_out(command, p, raw_files(p))
        elif any(ch in item for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(item))
            files += [m for m in matches if m.is_file() and is_image_file(m) and source(m)]
            _say_raw_left_out(command, item, [m for m in matches if m.is_file() and is_raw_file(m)])
            if not matches:
                files.append(p)  # reported as missing
        else:
            files.append(p)
    return list(dict.fromkeys(files))


def _say_export(command: str) -> Callable[[str], None]:
    """The one stderr line before a task's ONNX export: the first image of that task waits seconds
    longer, once per model and machine (the graph is cached)."""

    def say(task: str) -> None:
        from tqdm import tqdm

        from .export import onnx_cache_dir

        tqdm.write(f"instruct-ipt {command}: exporting {task} to ONNX once (cached in {onnx_cache_dir()})", file=sys.stderr)

    return say


class _TileBar:
    """A progress bar over one large image's tiles for all its ``tasks`` (a phone's 12-MP photo takes
    minutes on a CPU, and the folder bar moves once per file), labelled with the task running: made
    at the first tile, so an image that is not tiled shows none; on a terminal only (tqdm's
    ``disable=None``), gone when done. The pipeline reports each task's tiles from 1 again."""

    def __init__(self, name: str, tasks: Sequence[str], file: IO[str] | None = None, disable: bool | None = None) -> None:
        self.name, self.tasks = name, list(tasks)
        self.file, self.disable = file if file is not None else sys.stderr, disable
        self.bar: Any = None
        self.task = self.base = self.last = 0

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total * len(self.tasks), desc=self._label(), unit="tile",
                            disable=self.disable, file=self.file, leave=False)
        elif done <= self.last:  # the next task's tiles
            self.base += self.last
            self.task += 1
            self.bar.set_description_str(self._label(), refresh=False)
        self.last = done
        self.bar.update(self.base + done - self.bar.n)

    def _label(self) -> str:
        return f"{self.name}: {self.tasks[self.task]}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_restore(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from .data.images import ImageReadError, first_frame_only, heif_supported, heif_too_large, load_image
    from .instruct import InstructionError
    from .pipeline import RestorationPipeline, check_tiling

    # every argument is checked once, before any image is read
    if args.task and args.instruction:
        raise ValueError("give --task or --instruction, not both")
    check_tiling(args.tile, args.overlap, args.batch, flag="--")
    files = _expand_inputs(args.inputs, "restore")
    if not files:
        raise ValueError("no input images")
    if args.format == "heic" and not heif_supported():  # (before any image: not once per file)
        raise ValueError("-f heic needs pillow-heif (pip install 'instruct-ipt[heif]')")
    outdir = Path(args.output) if args.output else None
    name = f".restored.{args.format}"
    targets = [(outdir / f"{f.stem}{name}") if outdir else f.with_name(f"{f.stem}{name}") for f in files]
    sources: dict[Path, list[Path]] = {}
    for f, target in zip(files, targets):
        sources.setdefault(target.resolve(), []).append(f)
    clashes = [f"{' and '.join(map(str, fs))} -> {t}" for t, fs in sources.items() if len(fs) > 1]
    if clashes:  # one output would replace the other's
        raise ValueError("two inputs would be written to one output (the same name but for the suffix, or the same "
                         f"name from two folders with -o): {'; '.join(clashes)}; restore them in separate runs or -o folders")
    if args.skip_existing:  # (outputs are written atomically: one that exists is whole)
        todo = [(f, target) for f, target in zip(files, targets) if not target.exists()]
        if len(todo) < len(files):
            print(f"instruct-ipt restore: {len(files) - len(todo)} of {len(files)} image(s) left out: their output "
                  "exists (--skip-existing)", file=sys.stderr)
            if not todo:
                return 0
            files, targets = [f for f, _ in todo], [t for _, t in todo]
    pipe = RestorationPipeline.from_pretrained(args.model, device=args.device, engine=args.engine)
    if args.engine == "onnx":
        try:
            pipe.use_onnx()
        except ImportError as e:  # the export extra is not installed: one line, before any image is read
            print(f"instruct-ipt restore: error: {e}", file=sys.stderr)
            return 2
    pipe.on_export = _say_export("restore")
    plan = None
    if args.task is not None or args.instruction is not None:  # the same tasks for every file: chosen once
        try:
            plan = pipe.choose(task=args.task, instruction=args.instruction)  # unknown task: lists the model's tasks
        except InstructionError as e:
            print(f"instruct-ipt restore: {e}", file=sys.stderr)
            return 2
    inputs = {f.resolve() for f in files if f.exists()}
    failures = 0
    # one reader thread decodes the next file while the model runs on this one
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(load_image, files[0])
        for i, f in enumerate(tqdm(files, desc="restore", unit="img", disable=None if len(files) > 1 else True, file=sys.stderr)):
            loading, pending = pending, (reader.submit(load_image, files[i + 1]) if i + 1 < len(files) else None)
            target = targets[i]
            try:
                if target.resolve() in inputs:
                    raise ValueError(f"{target} is an input; refusing to overwrite it")
                image = loading.result()
                too_large = heif_too_large(image.rgb.shape) if args.format == "heic" else ""
                if too_large:  # (before the minutes of restoring it)
                    raise ValueError(too_large)
                choice = plan or pipe.choose(image.rgb)  # (blind mode: before the tiles, whose bar counts its tasks)
                tiles = _TileBar(f.name, choice.tasks)
                try:
                    restored = pipe.restore(image, choice=choice, tile=args.tile, overlap=args.overlap, batch=args.batch,
                                            progress=tiles)
                finally:
                    tiles.close()
                restored.save(target)
                tqdm.write(f"{f} -> {target}: {restored.choice.describe()}")  # one format, whatever chose the tasks
                warning = first_frame_only(f, image)
                if warning:
                    tqdm.write(f"instruct-ipt restore: warning: {warning}", file=sys.stderr)
            except (ImageReadError, ValueError, OSError) as e:
                failures += 1
                tqdm.write(_file_error("restore", f, e), file=sys.stderr)
    if failures:
        print(f"{failures} of {len(files)} image(s) failed", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """A local web page around the pipeline; Gradio is an optional extra, so it is checked first."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ValueError('the demo needs Gradio: pip install "instruct-ipt[demo]"') from None
    from .demo import build_demo
    from .pipeline import RestorationPipeline

    pipe = RestorationPipeline.from_pretrained(args.model, device=args.device)
    pipe.on_export = _say_export("demo")
    demo = build_demo(pipe)
    try:
        demo.launch(server_name=args.host, server_port=args.port, show_error=True)
    except OSError as e:  # the port is taken, or the host is not this machine's
        raise ValueError(f"cannot serve on {args.host}:{args.port} ({e}); choose another --port or --host") from None
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """One task as a file for tools without this package; the logic is ``export.py``'s, shared with ``--engine onnx``."""
    import time

    from .export import export
    from .model import resolve_model_dir

    model = _load_model(args.model, "cpu")  # an unknown task: export_merged's one-line error, before any work
    start = time.perf_counter()
    try:
        path = export(model, args.task, args.output, args.format, fp16=args.fp16)
    except ImportError as e:  # onnx not installed
        print(f"instruct-ipt export: error: {e}", file=sys.stderr)
        return 2
    size = path.stat().st_size / 2**20
    print(f"wrote {path} ({args.format}{', float16' if args.fp16 else ''}, {size:.1f} MiB): task {args.task} of "
          f"{resolve_model_dir(args.model)} in {time.perf_counter() - start:.1f} s")
    return 0


def _require_analysis_extra() -> None:
    """matplotlib is an optional extra: a one-line error (via ``main``) before any model is loaded."""
    from .analysis import require_matplotlib

    try:
        require_matplotlib()
    except ImportError as e:
        raise ValueError(str(e)) from None


def cmd_analyze_similarity(args: argparse.Namespace) -> int:
    """The paper's Table 2 for saved models; the logic is ``analysis``'s."""
    from .analysis import analyze_similarity, similarity_table

    _require_analysis_extra()
    results, paths = analyze_similarity(args.base, args.finetuned, args.names, args.out)
    print(similarity_table(results))
    for path in paths:
        print(f"wrote {path}")
    return 0


def cmd_analyze_rank_energy(args: argparse.Namespace) -> int:
    """The paper's Fig. 2 for saved models; the logic is ``analysis``'s."""
    from .analysis import analyze_rank_energy, rank_energy_table

    _require_analysis_extra()
    rows, paths = analyze_rank_energy(args.base, args.finetuned, args.constant, args.proportional, args.out)
    print(rank_energy_table(rows))
    for path in paths:
        print(f"wrote {path}")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    """One of the paper's tables: its arms trained, evaluated and reported; the logic is ``ablation``'s."""
    from .ablation import Settings, ablate
    from .inference import pick_device

    budget = None if args.steps is not None else (args.budget_minutes if args.budget_minutes is not None else
                                                  DEFAULT_ABLATION_MINUTES)
    if args.steps is not None and args.budget_minutes is not None:
        raise ValueError("give --budget-minutes or --steps, not both")
    if args.table == "table8":
        return _ablate_table8(args, budget)
    _require_analysis_extra()
    settings = Settings(size=args.size, budget_minutes=budget, steps=args.steps, train=tuple(args.train),
                        val=args.val, device=str(pick_device(args.device)), workers=args.workers)
    summary = ablate(args.table, args.out, settings, seeds=args.seeds, progress=not args.quiet)
    for arm, a in summary["arms"].items():
        print(f"{arm:>20}: " + "  ".join(f"{t} {m:.2f}" + (f" ± {sd:.2f}" if sd is not None else "") + " dB"
                                         for t, (m, sd) in a["psnr"].items()))
    for c in summary["claims"]:
        diff = c["difference"] if isinstance(c["difference"], str) else f"{c['difference']:+.3f}"
        print(f"{c['verdict']:>22}: {c['claim']} ({diff})")
    print(f"wrote {Path(args.out) / 'report.md'} and {Path(args.out) / 'results.json'}")
    return 0


def _ablate_table8(args: argparse.Namespace, budget: float | None) -> int:
    """Table 8 trains diffusion U-Nets: its own runner (``ablation.table8``), the same folder rules."""
    from .ablation.table8 import DiffusionSettings, ablate_table8
    from .inference import pick_device

    _require_diffusion_extra()
    settings = DiffusionSettings(size=args.size, budget_minutes=budget, steps=args.steps, train=tuple(args.train),
                                 val=args.val, device=str(pick_device(args.device)), sample_steps=args.sample_steps,
                                 views=args.views)
    summary = ablate_table8(args.out, settings, seeds=args.seeds, metric_weights=args.metric_weights,
                            progress=not args.quiet)
    for arm, tasks in summary["figures"].items():
        print(f"{arm:>10}: " + "  ".join(
            f"{t} PSNR in {sum(f['psnr_in']) / len(f['psnr_in']):.2f} / out {sum(f['psnr_out']) / len(f['psnr_out']):.2f} dB"
            for t, f in tasks.items()))
    for c in summary["claims"]:
        print(f"{c['verdict']:>22}: {c['claim']} ({c['difference']:+.3f})")
    for metric, why in summary["skipped"].items():
        print(f"skipped {metric}: {why}")
    print(f"wrote {Path(args.out) / 'report.md'} and {Path(args.out) / 'results.json'}")
    return 0


def _require_diffusion_extra() -> None:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise ImportError('the diffusion commands need diffusers: pip install "instruct-ipt[diffusion]"') from None


def cmd_diffusion_train(args: argparse.Namespace) -> int:
    """Train the base model or one arm of Table 8 from a YAML config; the logic is ``diffusion.train``'s."""
    _require_diffusion_extra()
    from .diffusion.train import DiffusionTrainConfig, DiffusionTrainer

    cfg = DiffusionTrainConfig.from_yaml(args.config)
    model_dir = DiffusionTrainer(cfg, device=args.device, resume=args.resume, max_minutes=args.max_minutes,
                                 progress=not args.quiet).run()
    print(f"wrote {model_dir}")
    return 0


def cmd_diffusion_sample(args: argparse.Namespace) -> int:
    """Fill a mask of one image (inpaint) or extend it (outpaint), with DDIM."""
    _require_diffusion_extra()
    from .data.images import load_image, save_image
    from .diffusion.model import MaskedDiffusion
    from .diffusion.sample import inpaint
    from .inference import pick_device

    out = Path(args.output)
    for given in (args.image, args.mask):
        if out.resolve() == Path(given).resolve():
            raise ValueError(f"{out} is an input; refusing to overwrite it")
    from PIL import Image

    if out.suffix.lower() not in Image.registered_extensions():  # before minutes of sampling, not after
        raise ValueError(f"{out}: unknown image format {out.suffix!r}")
    model = MaskedDiffusion.from_pretrained(args.model).to(pick_device(args.device))
    image = load_image(args.image)
    mask = load_image(args.mask).rgb
    result = inpaint(model, image.rgb, mask, args.task, steps=args.steps, seed=args.seed, progress=not args.quiet)
    save_image(out, result, alpha=image.alpha, grey=image.grey)  # written only once all of it is there (atomically)
    print(f"{args.image} -> {out}: {args.task}, {args.steps} DDIM steps, seed {args.seed}")
    return 0


#: default training minutes per arm and seed: a table of 3 arms x 2 seeds then trains 24 minutes
DEFAULT_ABLATION_MINUTES = 4.0


def build_parser() -> argparse.ArgumentParser:
    from .export import ENGINES, FORMATS
    from .models import SIZES

    parser = argparse.ArgumentParser(
        prog="instruct-ipt",
        description="All-in-one image restoration with task-modulated weights (Instruct-IPT).",
    )
    parser.add_argument("--version", action="version", version=f"instruct-ipt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="versions, device and a model summary (parameters per task, MACs)")
    p.add_argument("--model", metavar="DIR", help="a saved model folder (config.json + model.safetensors); "
                   "default: the shipped model")
    p.add_argument("--size", choices=SIZES, help="describe an untrained model of this named config instead")
    p.add_argument("--tasks", help="comma-separated task names of the untrained model (default: the five standard tasks)")
    p.add_argument("--rank", type=int, default=8, help="modulation rank (constant strategy)")
    p.add_argument("--strategy", choices=("constant", "proportional"), default="constant")
    p.add_argument("--proportion", type=float, default=0.05, help="rank share for the proportional strategy")
    p.add_argument("--plain", action="store_true", help="describe the unmodulated backbone")
    p.add_argument("--modulation-kind", choices=("low-rank", "replace"), default="low-rank",
                   help="low-rank biases (the method) or a full weight per task (weight replacement)")
    p.add_argument("--adaptation", choices=("prompt", "gating", "external"),
                   help="describe the backbone with this feature adaptation instead of modulation (Table 1's baselines)")
    p.add_argument("--macs", type=int, nargs="?", const=128, metavar="SIZE", help="also count MACs at SIZE x SIZE")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "eval",
        help="PSNR/SSIM of a saved model (and classical peers) on benchmark folders or synthetic degradations",
        description="Evaluate on benchmark folders (GoPro, Rain100L/H, SOTS, CSD, BSD68/CBSD68, input/+target/) "
        "or on synthetic degradations of a folder of clean photos. Prints a table per task headed by its "
        "protocol, and writes results.json and results.csv to --out.",
    )
    p.add_argument("--model", metavar="DIR", help="saved model folder, or 'default' for the shipped model")
    p.add_argument("--data", metavar="FOLDER", action="append", help="benchmark folder (repeatable)")
    p.add_argument("--task", help="task for --data when the layout does not imply one (input/ + target/)")
    p.add_argument("--photos", metavar="FOLDER", help="clean photos to degrade synthetically, once per task")
    p.add_argument("--tasks", help="comma-separated tasks for --photos (default: the model's tasks; none with --composite)")
    p.add_argument("--composite", action="append", metavar="A+B",
                   help="degrade --photos with several degradations at once, e.g. rain+noise (repeatable): one table "
                   "with the input, each task alone, the tasks in sequence, and blind mode")
    p.add_argument("--sigma", type=float, help="noise level (0-255) for denoise: clean-only benchmarks, --photos "
                   "and the noise of a --composite")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic degradations (default 0)")
    p.add_argument("--crop", type=_crop, default=0, metavar="SIZE",
                   help="centre-crop --photos to a square of this side, or to WxH (512x384) (0: whole image)")
    p.add_argument("--grey", action="store_true",
                   help="--photos as grey photos (luma in every channel, the same degradation in each); peers run grey")
    p.add_argument("--seam-period", type=int, default=64, metavar="PX",
                   help="also measure block seams: error jumps across every PX-th pixel line against the others "
                   "(1: none; default 64, the shipped model's grid span; 0: off)")
    g = p.add_argument_group("protocol (defaults: Y channel for derain, RGB otherwise; clamped, uint8-quantised)")
    g.add_argument("--channel", choices=("rgb", "y", "both"), help="measure on RGB, MATLAB BT.601 Y, or both")
    g.add_argument("--crop-border", type=int, help="pixels dropped on each side before measuring")
    g.add_argument("--no-clamp", action="store_true", help="measure raw outputs (not clamped to [0, 1])")
    g.add_argument("--no-quantize", action="store_true", help="measure float outputs (not rounded to 8 bits)")
    g.add_argument("--test-noise", choices=("float", "uint8"), help="synthetic noisy inputs as float or rounded to 8 bits")
    p.add_argument("--peers", action="store_true", help="also run classical baselines (input, BM3D, NLM, dark channel)")
    p.add_argument("--blind", action="store_true",
                   help="also a blind row for each task: the model's blind mode on each degraded image, told nothing "
                   "(a composite's table always has one), and what it named")
    p.add_argument("--save", action="store_true", help="write restored images under OUT/images/")
    p.add_argument("--out", default="eval-results", metavar="DIR", help="folder for results.json/.csv (default eval-results)")
    p.add_argument("--method", default="instruct-ipt", help="name of the model's rows in the table")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "train",
        help="train or extend a model from a YAML config (sync, plain, single, two-stage, bias-only; stages)",
        description="Train from a YAML config (see configs/). Several GPUs: "
        "torchrun --nproc_per_node=N -m instruct_ipt.train CONFIG.yaml",
    )
    p.add_argument("config", help="YAML training config")
    p.add_argument("--resume", action="store_true", help="continue the run in the config's out folder from its last checkpoint")
    p.add_argument("--out", help="override the config's output folder")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to OUT/log.jsonl)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (YAML), e.g. --set data.train=[photos/train] --set optim.lr=1e-3")
    p.add_argument("--steps", type=int, metavar="N",
                   help="cut every stage to N steps: a quick check that a config runs end to end")
    p.add_argument("--max-minutes", type=float, metavar="M",
                   help="scale every stage's length so the whole run fits M minutes on this machine (measured on its "
                   "first steps; --resume continues the same schedule)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("restore", help="restore images: by task, by instruction (-i), or blind")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("-o", "--output", metavar="DIR", help="output folder (default: beside each input as NAME.restored.png)")
    p.add_argument("-f", "--format", choices=("png", "tif", "jpg", "webp", "heic"), default="png",
                   help="the restored files' format (default png). png and tif keep 16 bits, heic 10 (pip install "
                   "'instruct-ipt[heif]'); jpg and webp are 8-bit; jpg, webp and heic are written at quality 95 (jpg "
                   "without chroma subsampling)")
    p.add_argument("-t", "--task", help="the task to run (see instruct-ipt info --model DIR), or several run in the "
                   "order given: -t derain,denoise")
    p.add_argument("-i", "--instruction", help='what to do, in plain words: "remove the rain", "it was foggy"')
    p.add_argument("--model", metavar="DIR", help="saved model folder (default: 'default', the model shipped with the package)")
    p.add_argument("--tile", type=int, default=None,
                   help="restore in tiles of this size (default: 512 above 1024x1024 pixels; 0: never)")
    p.add_argument("--overlap", type=int, default=32, help="overlap of neighbouring tiles, blended (default 32)")
    p.add_argument("--batch", type=int, default=1, metavar="N",
                   help="run N same-size tiles in one forward pass (halved automatically when GPU memory runs out)")
    p.add_argument("--skip-existing", action="store_true",
                   help="leave out an input whose output file is already there (a stopped run over a folder goes on "
                   "where it was: outputs are written whole or not at all)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--engine", choices=ENGINES, default="torch",
                   help="what runs the network: torch (default; measured faster per command on a CPU, docs/deployment.md), "
                   "onnx (onnxruntime; pip install 'instruct-ipt[export]'), or auto (onnxruntime on the CPU when "
                   "installed, else PyTorch). Each task's ONNX graph is exported once and cached on disk "
                   "($INSTRUCT_IPT_CACHE/onnx, default ~/.cache/instruct-ipt/onnx; safe to delete)")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("export", help="one task as a plain image-to-image network file: safetensors, ONNX or TorchScript",
                       description="Merge one task's biases into the weights and write a plain network: (N, 3, H, W) "
                       "RGB in [0, 1] in, the same shape out, any H and W (ONNX and TorchScript pad and crop inside "
                       "the graph). See docs/deployment.md.")
    p.add_argument("-t", "--task", required=True, help="the task to export (see instruct-ipt info --model DIR)")
    p.add_argument("--model", metavar="DIR", help="saved model folder (default: the model shipped with the package)")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="safetensors: weights + config for the IPTV2 class; onnx: opset 17 graph for onnxruntime "
                   "and other runtimes; torchscript: torch.jit.load without this package")
    p.add_argument("--fp16", action="store_true", help="float16 weights (and float16 input and output for onnx and "
                   "torchscript): half the size, for GPUs")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the file to write (atomically)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("interpret", help="show which task(s) an instruction selects, as JSON (no image needed)")
    p.add_argument("text", help="the instruction")
    p.add_argument("--model", metavar="DIR", help="use this model's instruction head and tasks")
    p.add_argument("--head", metavar="FILE", help="an instruction head file")
    p.set_defaults(func=cmd_interpret)

    p = sub.add_parser("detect", help="what blind mode sees in images (the tasks restore would run), without "
                       "restoring them")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--model", metavar="DIR", help="saved model folder (default: the model shipped with the package)")
    p.add_argument("--json", action="store_true", help="one JSON object per image: tasks, confidences, suggested, "
                   "and the classifier's probability of each class")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("add-task", help="add a task of your own from a folder of (degraded, clean) pairs: biases, "
                       "instruction phrasings, one new model folder")
    p.add_argument("name", help="the new task's name, e.g. lowlight")
    p.add_argument("--pairs", required=True, action="append", metavar="FOLDER",
                   help="pairs in a layout eval detects, e.g. input/ + target/ with the same file names (repeatable)")
    p.add_argument("--out", required=True, metavar="NEWDIR", help="the new model folder (must not exist or be empty)")
    p.add_argument("--model", metavar="DIR", help="the model that gains the task (default: the shipped model)")
    p.add_argument("--phrases", metavar="FILE", help="requests that should pick the task, one per line "
                   "(default: a few built from the name)")
    p.add_argument("--corpus", metavar="DIR", help="phrasings of the other tasks and unsupported requests for the "
                   "instruction head, <task>.txt files (default: the packaged corpus)")
    p.add_argument("--iterations", type=int, default=600, help="bias-only training steps (default 600)")
    p.add_argument("--max-minutes", type=float, metavar="M", help="instead, as many steps as fit M minutes")
    p.add_argument("--patch-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--resume", action="store_true", help="continue a stopped run (its checkpoints are in NEWDIR.run)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_add_task)

    p = sub.add_parser("calibrate-blind", help="calibrate blind mode for a model of your own (its second look measures "
                       "the model's restorations); written into the model's folder",
                       description="Choose blind mode's peeling thresholds again for this model - the same questions "
                       "its classifier asked of the model it was calibrated for - from clean photos, each as it is, "
                       "with each degradation and with each pair. About 2 minutes a photo on 2 CPU cores.")
    p.add_argument("--model", required=True, metavar="DIR", help="the model folder")
    p.add_argument("--photos", required=True, action="append", metavar="PATH",
                   help="clean photos the classifier did not train on: files, folders or globs (repeatable; 5 or more)")
    p.add_argument("--seeds", type=int, default=2, help="degraded versions of each photo per case (default 2)")
    p.add_argument("--out", metavar="FILE", help="where to write the classifier (default: DIR/degradation_classifier.safetensors)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    p.set_defaults(func=cmd_calibrate_blind)

    p = sub.add_parser("train-head", help="retrain the instruction head, e.g. for a model with new tasks")
    p.add_argument("--model", metavar="DIR", help="train for this model's tasks; the head is saved in its folder")
    p.add_argument("--corpus", metavar="DIR", help="corpus folder of <task>.txt files (default: the packaged corpus)")
    p.add_argument("--phrases", action="append", metavar="TASK=FILE", help="extra phrasings for a task, one per line")
    p.add_argument("--out", metavar="FILE", help="where to write the head")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train_head)

    p = sub.add_parser("demo", help='a web page to try the model in a browser (needs pip install "instruct-ipt[demo]")',
                       description="Serve a Gradio page: upload a photo, let the model detect the problem, name the "
                       "task or describe it; compare before and after; download the full-resolution result. "
                       "The same function is served as the API endpoint /restore (gradio_client).")
    p.add_argument("--model", metavar="DIR", help="saved model folder (default: the model shipped with the package)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 serves the network, "
                   "with no login)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("analyze", help="weight analyses of the paper: per-group similarity of fine-tuned models "
                       "(Table 2), fine-tuning delta energy per rank (Fig. 2)",
                       description="Compare the backbone weights of fine-tuned models with their base (task biases "
                       "of modulated models are left out); tables to stdout, markdown/CSV/PNG to --out. Needs "
                       'pip install "instruct-ipt[analysis]". See docs/reproduction.md.')
    analyses = p.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    a = analyses.add_parser("similarity", help="mean cosine similarity to the base per layer group, one column per "
                            "fine-tuned model: similarity.md, .csv, .png")
    a.add_argument("--base", required=True, metavar="PLAIN", help="the model the others were fine-tuned from")
    a.add_argument("--finetuned", required=True, nargs="+", metavar="DIR", help="fine-tuned model folders")
    a.add_argument("--names", nargs="+", metavar="NAME", help="one name per fine-tuned model (default: each folder's "
                   "name)")
    a.add_argument("--out", required=True, metavar="DIR", help="folder for the files")
    a.set_defaults(func=cmd_analyze_similarity)
    a = analyses.add_parser("rank-energy", help="per modulated layer, the share of the fine-tuning delta's energy "
                            "within the constant and the proportional rank: rank_energy.csv and a chart per strategy")
    a.add_argument("--base", required=True, metavar="PLAIN", help="the model that was fine-tuned")
    a.add_argument("--finetuned", required=True, metavar="FT", help="the fine-tuned model folder")
    a.add_argument("--constant", type=int, default=8, help="rank of the constant strategy (default 8)")
    a.add_argument("--proportional", type=float, default=0.05,
                   help="share of each layer's full rank for the proportional strategy (default 0.05)")
    a.add_argument("--out", required=True, metavar="DIR", help="folder for the files")
    a.set_defaults(func=cmd_analyze_rank_energy)

    from .ablation import TABLES

    p = sub.add_parser("ablate", help="one of the paper's tables: train its arms one after another (resumable), "
                       "evaluate them and write report.md with the paper's claims checked",
                       description="Every arm gets the same data (denoise sigma 25 + motion deblur), the same budget "
                       "and is evaluated on --val with the eval protocol. Rerun the same command to resume. Tables "
                       "run into one --out share arms (table2 and fig2: all of them). See docs/reproduction.md.")
    p.add_argument("table", choices=[*TABLES, "table8"], help="; ".join(f"{t.name}: {t.title.split(': ', 1)[1]}"
                                                                   for t in TABLES.values())
                   + "; table8: weight modulation of a diffusion U-Net for inpainting and outpainting (needs "
                   '"instruct-ipt[diffusion]")')
    p.add_argument("--size", choices=("tiny", "small", "base"), default="tiny", help="backbone size (default tiny)")
    p.add_argument("--budget-minutes", type=float, metavar="N",
                   help=f"training minutes per arm and seed (default {DEFAULT_ABLATION_MINUTES:g})")
    p.add_argument("--steps", type=int, metavar="N", help="a fixed number of steps per arm and seed instead of a "
                   "time budget (the same schedule on any machine)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per arm; the spread decides 'within noise' (default 2)")
    p.add_argument("--train", nargs="+", default=["../shared/photos/train"], metavar="DIR",
                   help="folders of clean training photos (default ../shared/photos/train)")
    p.add_argument("--val", default="../shared/photos/val", metavar="DIR",
                   help="folder of clean validation photos (default ../shared/photos/val)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present; bf16 autocast there for the restoration "
                   "tables), cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int, default=1, help="DataLoader worker processes per run (default 1)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder of the runs, results.json and report.md")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--metric-weights", metavar="DIR", help="table8: folder of locally stored metric-network weights "
                   "for LPIPS, DISTS, FID and IS (nothing is downloaded; without it they are skipped, and the "
                   "report says why); the files are listed in docs/diffusion.md")
    p.add_argument("--sample-steps", type=int, default=25, help="table8: DDIM steps per evaluation sample (default 25)")
    p.add_argument("--views", type=int, default=4, help="table8: seeded views per validation photo (default 4)")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("diffusion", help="the diffusion extension: a masked-image U-Net with task modulation for "
                       'inpainting and outpainting (needs pip install "instruct-ipt[diffusion]")',
                       description="Train the base model or a Table 8 arm from a YAML config, or fill a mask with a "
                       "trained model. See docs/diffusion.md.")
    jobs = p.add_subparsers(dest="job", metavar="JOB", required=True)
    j = jobs.add_parser("train", help="train from a YAML config (arm: base | plain | bias-only | sync)")
    j.add_argument("config", help="YAML file (fields: docs/diffusion.md; examples in configs/diffusion/)")
    j.add_argument("--max-minutes", type=float, metavar="M", help="a time budget: a few steps are timed, then the step "
                   "count is fixed (and kept on --resume)")
    j.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    j.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    j.add_argument("--quiet", action="store_true", help="no progress bar")
    j.set_defaults(func=cmd_diffusion_train)
    j = jobs.add_parser("sample", help="fill the white pixels of MASK in IMAGE (inpaint) or extend it (outpaint)")
    j.add_argument("image", help="the image (at least the model's size; it runs at its own size)")
    j.add_argument("--mask", required=True, help="same size as the image; white (> 50%%) = pixels to generate")
    j.add_argument("--model", required=True, metavar="DIR", help="a folder written by diffusion train")
    j.add_argument("--task", required=True, choices=("inpaint", "outpaint"),
                   help="the mask's task (a model with task biases uses that task's)")
    j.add_argument("-o", "--output", required=True, metavar="OUT", help="output image file (never an input)")
    j.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    j.add_argument("--seed", type=int, default=0, help="seed of the starting noise (default 0): same seed, same result")
    j.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    j.add_argument("--quiet", action="store_true", help="no progress bar")
    j.set_defaults(func=cmd_diffusion_sample)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        with warnings.catch_warnings():
            _show_own_warnings(args.command)
            return args.func(args)
    except (ValueError, OSError) as e:  # (FileNotFoundError is an OSError: a full disk, a read-only folder too)
        print(f"instruct-ipt {args.command}: error: {e}", file=sys.stderr)
        return 2


def _show_own_warnings(command: str) -> None:
    """Inside ``warnings.catch_warnings()``: blind mode's calibration warning as one line in the CLI's
    own voice (``instruct-ipt restore: warning: ...``), once per run; other warnings as Python shows them."""
    from .instruct.blind import UncalibratedPeelingWarning

    shown = warnings.showwarning
    warnings.simplefilter("once", UncalibratedPeelingWarning)

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: object = None,
             line: str | None = None) -> None:
        if issubclass(category, UncalibratedPeelingWarning):
            from tqdm import tqdm

            tqdm.write(f"instruct-ipt {command}: warning: {message}", file=sys.stderr)  # (between progress bar lines)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show


if __name__ == "__main__":
    sys.exit(main())
