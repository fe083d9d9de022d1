"""Run a model (and classical peers) over benchmark folders or synthetic degradations; tabulate."""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..data.degradations import as_grey, composite_tasks, grey_degraded, is_composite, make_degradation
from ..data.images import ImageReadError, list_images, read_rgb, save_image
from ..data.paired import SeededNoise, detect_layout
from ..io import atomic_write_text
from .metrics import seam_ratio
from .peers import PeerUnavailable, peers_for
from .protocol import Protocol, default_protocol


@dataclass
class Case:
    task: str
    dataset: str
    name: str
    input: np.ndarray
    target: np.ndarray
    info: dict = field(default_factory=dict)


@dataclass
class Skip:
    what: str
    reason: str
    #: False for a peer whose optional package is missing: noted, but every image still ran
    fatal: bool = True

    def __str__(self) -> str:
        return f"skipped {self.what}: {self.reason}"


@dataclass
class Record:
    task: str
    dataset: str
    method: str
    image: str
    seconds: float
    metrics: dict[str, float]


def benchmark_cases(
    folder: str | os.PathLike, task: str | None = None, sigma: float | None = None, protocol: Protocol | None = None
) -> Iterator[Case | Skip]:
    """Cases from a benchmark folder in one of the layouts of :func:`~instruct_ipt.data.detect_layout`."""
    layout = detect_layout(folder)
    task = task or layout.task
    if task is None:
        raise ValueError(f"{folder}: the {layout.name} layout does not imply a task; say which with --task")
    dataset = Path(folder).name
    noise = None
    if any(p.input is None for p in layout.pairs):
        if task != "denoise" or sigma is None:
            raise ValueError(f"{folder} holds clean images only: evaluate it as denoise with a noise level (--sigma)")
        noise = SeededNoise(sigma)
        dataset = f"{dataset}-sigma{sigma:g}"
    for path in layout.unpaired:
        yield Skip(str(path), "no matching target image")
    protocol = protocol or default_protocol(task)
    for pair in layout.pairs:
        try:
            target = read_rgb(pair.target)
            if pair.input is None:
                degraded = protocol.prepare_noisy_input(noise(target))  # draw even if a later file fails
            else:
                degraded = read_rgb(pair.input)
        except ImageReadError as e:
            yield Skip(pair.name, str(e))
            continue
        if degraded.shape != target.shape:
            yield Skip(pair.name, f"size mismatch: input {degraded.shape[:2]} vs target {target.shape[:2]}")
            continue
        yield Case(task, dataset, pair.name, degraded, target, {"sigma": sigma} if noise else {})


def synthetic_cases(
    folder: str | os.PathLike,
    tasks: Sequence[str],
    params: Mapping[str, Mapping] | None = None,
    seed: int = 0,
    crop: int | tuple[int, int] = 0,
    protocols: Mapping[str, Protocol] | None = None,
    limit: int = 0,
    grey: bool = False,
) -> Iterator[Case | Skip]:
    """Each clean photo of ``folder`` degraded once per task with ``default_rng((seed, crc32(task), index))``.

    A task may be a composite (``"rain+noise"``, its canonical name): ``params`` then go to its
    components by task name (``{"denoise": {"sigma": 25}}``) and its dataset is
    ``<folder>-rain+noise`` (instead of ``<folder>-synthetic``).
    ``limit``: only that many photos, evenly spaced in name order (indices stay those of the folder).
    ``grey``: the grey version of each photo (:func:`~instruct_ipt.data.degradations.as_grey`), degraded
    the same in every channel, as a grey file is (a ``-grey`` dataset; peers then work on one channel).
    ``crop``: the centre square of that side, or the centre (width, height) rectangle; 0: whole photos.
    """
    from ..data.validation import center_crop

    crop_hw = crop if isinstance(crop, int) else (crop[1], crop[0])
    files = list(enumerate(list_images(folder)))
    if 0 < limit < len(files):
        files = [files[round(i * (len(files) - 1) / max(1, limit - 1))] for i in range(limit)]
    if not files:
        raise FileNotFoundError(f"{folder}: no images (png, jpg, bmp, tif, webp) in this folder")
    params = params or {}
    ops = {t: make_degradation(t, **{c: dict(params[c]) for c in composite_tasks(t) if c in params})
           if is_composite(t) else make_degradation(t, **dict(params.get(t, {}))) for t in tasks}
    for task in tasks:
        noisy = task == "denoise" or (is_composite(task) and "denoise" in composite_tasks(task))
        dataset = f"{Path(folder).name}-{task if is_composite(task) else 'synthetic'}" + ("-grey" if grey else "")
        protocol = (protocols or {}).get(task) or default_protocol(task)
        for i, f in files:
            try:
                clean = center_crop(read_rgb(f), crop_hw)
            except ImageReadError as e:
                yield Skip(str(f), str(e))
                continue
            if grey:
                clean = as_grey(clean)
            d = ops[task](clean, np.random.default_rng((seed, zlib.crc32(task.encode()), i)))
            image = grey_degraded(d.image) if grey else d.image
            degraded = protocol.prepare_noisy_input(image) if noisy else image
            yield Case(task, dataset, f.stem, degraded, clean, {**d.params, "grey": grey})


def evaluate(
    cases: Iterable[Case | Skip],
    restore: Callable[[Case], np.ndarray] | None,
    method: str = "instruct-ipt",
    protocols: Mapping[str, Protocol] | None = None,
    peers: bool = False,
    save_dir: str | os.PathLike | None = None,
    on_skip: Callable[[Skip], None] | None = None,
    progress: Callable[[Case], None] | None = None,
    seam_period: int | None = None,
    methods: Mapping[str, Callable[[Case], np.ndarray]] | None = None,
) -> tuple[list[Record], list[Skip]]:
    """Measure ``restore`` (and the task's peers) on every case; skipped inputs are collected.

    ``methods``: more rows, each a name and how it restores a case (e.g. :func:`composite_methods`).

    ``seam_period``: also measure :func:`~instruct_ipt.eval.metrics.seam_ratio` at that period
    (a ``seamN`` metric: 1 when no block seams)."""
    records: list[Record] = []
    skipped: list[Skip] = []
    unavailable: set[tuple[str, str]] = set()

    def skip(s: Skip) -> None:
        skipped.append(s)
        if on_skip:
            on_skip(s)

    for case in cases:
        if isinstance(case, Skip):
            skip(case)
            continue
        protocol = (protocols or {}).get(case.task) or default_protocol(case.task)
        runs: list[tuple[str, Callable[[], np.ndarray]]] = []
        if restore is not None:
            runs.append((method, lambda c=case: restore(c)))
        for name, fn in (methods or {}).items():
            runs.append((name, lambda c=case, fn=fn: fn(c)))
        if peers:
            for peer in peers_for(case.task):
                runs.append((peer.name, lambda c=case, fn=peer.fn: fn(c.input, c.info)))
        for name, run in runs:
            if (case.task, name) in unavailable:
                continue
            try:
                t0 = time.perf_counter()
                out = run()
                seconds = time.perf_counter() - t0
            except PeerUnavailable as e:
                unavailable.add((case.task, name))
                skip(Skip(f"peer {name} ({case.task})", str(e), fatal=False))
                continue
            out = protocol.prepare_output(out)
            metrics = protocol.measure(out, case.target, prepared=True)
            if seam_period:
                metrics[f"seam{seam_period}"] = seam_ratio(out, case.target, seam_period)
            records.append(Record(case.task, case.dataset, name, case.name, seconds, metrics))
            if save_dir is not None:
                save_image(Path(save_dir) / case.task / case.dataset / name / f"{Path(case.name).name}.png", out)
        if progress:
            progress(case)
    return records, skipped


def blind_method(pipe, named: Counter[str] | None = None) -> Callable[[Case], np.ndarray]:
    """Blind mode as a row: the tasks the pipeline sees in the degraded image (it is told nothing
    else), run in its order; the image itself when it sees nothing to do. Its time includes the
    look. ``named``: counts what it named per image (``"derain+denoise"``, ``"nothing"``), so that a
    table's blind row can say where its decibels come from.

    ``pipe``: a :class:`~instruct_ipt.pipeline.RestorationPipeline` (its ``run`` and ``choose``)."""

    def run(c: Case) -> np.ndarray:
        tasks = pipe.choose(c.input).tasks
        if named is not None:
            named["+".join(tasks) or "nothing"] += 1
        return pipe.run(c.input, tasks) if tasks else c.input

    return run


def describe_named(named: Counter[str]) -> str:
    """``blind mode named: dehaze x3, nothing x1 (of 4 images)``: a :func:`blind_method` row's choices."""
    return (f"blind mode named: {', '.join(f'{k} x{n}' for k, n in named.most_common())} "
            f"(of {sum(named.values())} images)")


def composite_methods(pipe, sequence: Sequence[str], named: Counter[str] | None = None) -> dict[str, Callable[[Case], np.ndarray]]:
    """The rows of a composite's table, in order: ``input`` (the degraded image itself), each task
    of ``sequence`` alone (``"<task> only"``), all of them one after another in ``sequence``'s order
    (``sequence``), the same in the opposite order (``reverse order``: the figure that says whether
    the order matters), and blind mode (``blind``: :func:`blind_method`, counting in ``named``).

    ``pipe``: a :class:`~instruct_ipt.pipeline.RestorationPipeline` (its ``run`` and ``choose``)."""
    methods: dict[str, Callable[[Case], np.ndarray]] = {"input": lambda c: c.input}
    for t in sequence:
        methods[f"{t} only"] = lambda c, t=t: pipe.run(c.input, [t])
    methods["sequence"] = lambda c: pipe.run(c.input, list(sequence))
    methods["reverse order"] = lambda c: pipe.run(c.input, list(reversed(sequence)))
    methods["blind"] = blind_method(pipe, named)
    return methods


@dataclass
class Row:
    task: str
    dataset: str
    method: str
    images: int
    seconds_per_image: float
    metrics: dict[str, float]


def summarise(records: Sequence[Record]) -> list[Row]:
    """Mean metrics and seconds per image for each (task, dataset, method), in first-seen order."""
    groups: dict[tuple[str, str, str], list[Record]] = {}
    for r in records:
        groups.setdefault((r.task, r.dataset, r.method), []).append(r)
    rows = []
    for (task, dataset, method), rs in groups.items():
        keys = rs[0].metrics.keys()
        rows.append(
            Row(task, dataset, method, len(rs), statistics.fmean(r.seconds for r in rs),
                {k: statistics.fmean(r.metrics[k] for r in rs) for k in keys})
        )
    return rows


def format_table(rows: Sequence[Row], protocols: Mapping[str, Protocol] | None = None, setting: str = "") -> str:
    """A plain-text table per task, each headed by the images it measured (``setting``: e.g. the
    crop size and noise level) and its protocol."""
    out = io.StringIO()
    for task in dict.fromkeys(r.task for r in rows):
        trs = [r for r in rows if r.task == task]
        protocol = (protocols or {}).get(task) or default_protocol(task)
        keys = list(trs[0].metrics)
        head = ["dataset", "method", "images"] + [k.replace("_", " ").upper().replace("RGB", "(RGB)").replace(" Y", " (Y)") for k in keys] + ["s/image"]
        body = [
            [r.dataset, r.method, str(r.images)]
            + [f"{r.metrics[k]:.4f}" if k.startswith("ssim") else f"{r.metrics[k]:.2f}" for k in keys]
            + [f"{r.seconds_per_image:.3f}"]
            for r in trs
        ]
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        out.write(f"\n{task} | {setting + ' | ' if setting else ''}protocol: {protocol.describe()}\n")
        out.write("  ".join(h.ljust(w) for h, w in zip(head, widths)) + "\n")
        out.write("  ".join("-" * w for w in widths) + "\n")
        for line in body:
            out.write("  ".join(x.ljust(w) for x, w in zip(line, widths)) + "\n")
    return out.getvalue()


def write_results(
    folder: str | os.PathLike, rows: Sequence[Row], records: Sequence[Record], skipped: Sequence[Skip],
    protocols: Mapping[str, Protocol], meta: dict,
) -> tuple[Path, Path]:
    """``results.json`` (summary, per-image records, protocols, skips) and ``results.csv`` (summary)."""
    folder = Path(folder)
    doc = {
        **meta,
        "protocols": {t: {**asdict(p), "description": p.describe()} for t, p in protocols.items()},
        "summary": [asdict(r) for r in rows],
        "images": [asdict(r) for r in records],
        "skipped": [asdict(s) for s in skipped],
    }
    json_path = atomic_write_text(folder / "results.json", json.dumps(doc, indent=2, default=float) + "\n")
    keys = list(dict.fromkeys(k for r in rows for k in r.metrics))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["task", "dataset", "method", "images", *keys, "seconds_per_image", "protocol"])
    for r in rows:
        p = protocols.get(r.task) or default_protocol(r.task)
        w.writerow([r.task, r.dataset, r.method, r.images, *(f"{r.metrics.get(k, float('nan')):.6f}" for k in keys),
                    f"{r.seconds_per_image:.6f}", p.describe()])
    csv_path = atomic_write_text(folder / "results.csv", buf.getvalue())
    return json_path, csv_path
