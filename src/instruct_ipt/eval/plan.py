"""Plan an evaluation: which tasks run on which sources, with which protocols, under which heading.

:func:`plan_eval` turns an :class:`EvalRequest` (what ``instruct-ipt eval`` was asked) and the
model's tasks into :class:`EvalJob` s, one per task and source, each with a callable that yields its
cases for :func:`~.runner.evaluate`, plus the tasks skipped before any image is read.
:func:`results_meta` is the header of ``results.json``.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ..instruct.order import order_tasks
from .protocol import Protocol, default_protocol
from .runner import Case, Skip, benchmark_cases, synthetic_cases


@dataclass(frozen=True)
class EvalRequest:
    """What to evaluate. ``data``: benchmark folders (their layout names the task unless ``task``
    does); ``photos``: clean photos degraded synthetically once per task of ``tasks`` (default: the
    model's tasks that have a synthetic degradation, or all of those without a model).
    ``protocol``: :class:`~.protocol.Protocol` fields to change in every task's default protocol.
    ``composites``: names such as ``"rain+noise"``; each degrades every photo with all its
    components at once (see :mod:`~instruct_ipt.data.degradations.composite`) and gets one table:
    the input, each task alone, the tasks in sequence (restoration order) and blind mode. With
    composites and no ``tasks``, no single-task tables are made."""

    data: Sequence[str | os.PathLike] = ()
    task: str | None = None
    photos: str | os.PathLike | None = None
    tasks: Sequence[str] | None = None
    #: noise level (0-255) for denoise: clean-only benchmarks and synthetic photos
    sigma: float | None = None
    seed: int = 0
    #: centre-crop the photos to a square of this side, or to this (width, height) (0: whole images)
    crop: int | tuple[int, int] = 0
    grey: bool = False
    protocol: Mapping[str, Any] = field(default_factory=dict)
    composites: Sequence[str] = ()

    def __post_init__(self) -> None:
        # here, not at the first noisy image: the CLI builds the request before it loads the model
        if self.sigma is not None and not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"sigma: a noise level >= 0 on the 0-255 scale, got {self.sigma:g}")


class EvalJob(NamedTuple):
    """One task on one source: printed as one table headed by ``setting``."""

    task: str
    #: how many images ``make_cases`` yields (for a progress bar)
    images: int
    make_cases: Callable[[], Iterator[Case | Skip]]
    setting: str
    #: a composite's tasks in the restoration order (:func:`~instruct_ipt.instruct.order_tasks`); () for one task
    sequence: tuple[str, ...] = ()


@dataclass
class EvalPlan:
    jobs: list[EvalJob]
    #: tasks (and composites) left out before any image is read (no synthetic degradation, or unknown to the model)
    skipped: list[Skip]
    #: the protocol of every requested task (including skipped ones the model lacks)
    protocols: dict[str, Protocol]


def crop_text(crop: int | tuple[int, int]) -> str:
    """``384`` for a square side, ``512x384`` for (width, height)."""
    return str(crop) if isinstance(crop, int) else f"{crop[0]}x{crop[1]}"


def plan_eval(request: EvalRequest, model_tasks: Sequence[str] | None = None) -> EvalPlan:
    """The jobs of ``request`` for a model with ``model_tasks`` (None: no model, peers only).

    Raises ValueError for a benchmark folder whose layout implies no task when ``request.task`` is
    unset, for a bad composite name (an unknown or repeated component) or composites without
    photos; FileNotFoundError for a missing folder.
    """
    from ..data.degradations import DEGRADATIONS, composite_name, composite_tasks
    from ..data.images import list_images
    from ..data.paired import detect_layout

    if not request.data and not request.photos:
        raise ValueError("nothing to evaluate: no benchmark folder and no folder of photos")
    skipped: list[Skip] = []
    benchmarks = []  # (folder, task, images)
    for folder in request.data:
        layout = detect_layout(folder)
        task = request.task or layout.task
        if task is None:
            raise ValueError(f"{folder}: the {layout.name} layout does not imply a task; say which with --task")
        benchmarks.append((folder, task, len(layout.pairs) + len(layout.unpaired)))
    composites: dict[str, tuple[str, ...]] = {}  # canonical name -> tasks in the physical order
    for c in request.composites:
        tasks = composite_tasks(c)  # an unknown or repeated component: a ValueError that says which
        if len(tasks) < 2:  # (one degradation is a task's own table: --tasks, which names it and seeds it so)
            raise ValueError(f"composite {c!r} names one degradation: join two or more with '+' (e.g. rain+noise); "
                             f"for {tasks[0]} alone give --tasks {tasks[0]}")
        composites.setdefault(composite_name(tasks), tasks)
    if composites and not request.photos:
        raise ValueError("a composite degrades clean photos: give them with --photos")
    photo_tasks: list[str] = []
    n_photos = 0
    if request.photos and (request.tasks or not composites):
        known = list(DEGRADATIONS)
        tasks = list(request.tasks) if request.tasks else [t for t in (known if model_tasks is None else model_tasks) if t in known]
        for t in tasks:
            if t not in known:
                skipped.append(Skip(f"task {t}", f"no synthetic degradation for it; known: {', '.join(known)}"))
        photo_tasks = [t for t in tasks if t in known]
    if request.photos:
        n_photos = len(list_images(request.photos))
    all_tasks = list(dict.fromkeys([*(t for _, t, _ in benchmarks), *photo_tasks]))
    if model_tasks is not None:
        for t in all_tasks:
            if t not in model_tasks:
                skipped.append(Skip(f"task {t}", f"the model has no task {t!r}; it knows: {', '.join(model_tasks)}"))
    runnable_composites = []
    for name, tasks in composites.items():
        missing = [t for t in tasks if model_tasks is not None and t not in model_tasks]
        if model_tasks is None:
            skipped.append(Skip(f"composite {name}", "needs a model (--model): its rows are the model's tasks"))
        elif missing:
            skipped.append(Skip(f"composite {name}", f"the model has no task {missing[0]!r}; it knows: {', '.join(model_tasks)}"))
        else:
            runnable_composites.append(name)
    protocols = {t: default_protocol(t).with_(**request.protocol) for t in [*all_tasks, *composites]}
    runnable = [t for t in all_tasks if model_tasks is None or t in model_tasks]

    jobs = []
    for folder, t, n in benchmarks:
        if t in runnable:
            jobs.append(EvalJob(t, n, lambda folder=folder, t=t: benchmark_cases(folder, t, request.sigma, protocols[t]),
                                f"{Path(folder).name}: benchmark images"))
    if request.photos:
        folder = request.photos
        params = {"denoise": {"sigma": request.sigma}} if request.sigma is not None else {}
        setting = (f"{Path(folder).name}: " + ("grey versions, " if request.grey else "")
                   + (f"centre crops of {crop_text(request.crop)} px" if request.crop else "whole images"))
        for t in photo_tasks:
            if t in runnable:
                sigma = f", sigma {request.sigma:g}" if t == "denoise" and request.sigma is not None else ""
                jobs.append(EvalJob(t, n_photos, lambda t=t: synthetic_cases(
                    folder, [t], params, request.seed, request.crop, protocols, grey=request.grey), setting + sigma))
        for name in runnable_composites:
            sequence = tuple(order_tasks(composites[name]))
            sigma = f", sigma {request.sigma:g}" if "denoise" in sequence and request.sigma is not None else ""
            jobs.append(EvalJob(name, n_photos, lambda name=name: synthetic_cases(
                folder, [name], params, request.seed, request.crop, protocols, grey=request.grey),
                setting + sigma + f", sequence: {' then '.join(sequence)}", sequence))
    return EvalPlan(jobs, skipped, protocols)


def results_meta(
    request: EvalRequest, model: str | None, device: str, seam_period: int | None = None
) -> dict[str, Any]:
    """The run's settings for ``results.json``; with a ``model`` (a folder or "default"), also its
    folder and the SHA-256 of its weights, so a number names the exact model that made it."""
    from ..model import WEIGHTS_NAME, resolve_model_dir
    from ..version import __version__

    meta = {"model": model, "device": device, "seed": request.seed, "sigma": request.sigma, "crop": request.crop,
            "grey": request.grey, "seam_period": seam_period, "composites": list(request.composites),
            "channel": request.protocol.get("channel") or "per task (see protocols)", "version": __version__}
    if model:
        weights = resolve_model_dir(model) / WEIGHTS_NAME
        meta.update(model_dir=str(weights.parent), model_sha256=hashlib.sha256(weights.read_bytes()).hexdigest())
    return meta
