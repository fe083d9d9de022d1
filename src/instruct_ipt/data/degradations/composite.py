"""Several degradations of one photo at once (``"rain+noise"``), applied in the physical order.

A composite is named by joining its components with ``+``, each either by its operator noun
(``haze``, ``snow``, ``rain``, ``blur``, ``noise``, ``jpeg``) or by its task name (``dehaze``,
``desnow``, ``derain``, ``deblur``, ``denoise``, ``jpeg``). Whatever order the name is written in,
the components are applied as the degradations arise: the scene first (haze, then snow, then
rain in front of it), then the camera's blur, then sensor noise, then JPEG compression
(:data:`PHYSICAL_ORDER`). Restoring runs roughly the reverse, amended pair by pair by measurement
(:func:`instruct_ipt.instruct.order_tasks`).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .base import Degradation, Degraded, check_image, degradation_margin

#: the order in which the degradations of one photo arise; a composite applies its components so
PHYSICAL_ORDER: tuple[str, ...] = ("dehaze", "desnow", "derain", "deblur", "denoise", "jpeg")

#: the operator noun of each task (what a composite name may say instead of the task name)
NOUNS: dict[str, str] = {"dehaze": "haze", "desnow": "snow", "derain": "rain", "deblur": "blur", "denoise": "noise",
                         "jpeg": "jpeg"}

#: every spelling of a component -> its task name
ALIASES: dict[str, str] = {**{t: t for t in PHYSICAL_ORDER}, **{n: t for t, n in NOUNS.items()}}


def is_composite(name: str) -> bool:
    return "+" in name


def _known() -> str:
    return ", ".join(f"{n} ({t})" if n != t else t for t, n in NOUNS.items())


def component_task(word: str, name: str = "") -> str:
    """The task name of one component spelling (``"rain"`` or ``"derain"`` -> ``"derain"``)."""
    task = ALIASES.get(word.strip())
    if task is None:
        where = f" in {name!r}" if name else ""
        raise ValueError(f"unknown degradation {word.strip()!r}{where}; known: {_known()}")
    return task


def composite_tasks(name: str) -> tuple[str, ...]:
    """The task names of the composite ``name``, in :data:`PHYSICAL_ORDER` (the order applied).

    Raises ValueError for an unknown component (listing the known ones) or one named twice."""
    tasks = [component_task(part, name) for part in name.split("+")]
    for t in tasks:
        if tasks.count(t) > 1:
            raise ValueError(f"{name!r} names {NOUNS[t]} ({t}) twice: a composite applies each degradation once")
    return tuple(sorted(tasks, key=PHYSICAL_ORDER.index))


def composite_name(tasks: Sequence[str]) -> str:
    """The canonical name of a composite: its operator nouns in the physical order (``"rain+noise"``)."""
    return "+".join(NOUNS[t] for t in sorted(tasks, key=PHYSICAL_ORDER.index))


def component_rng(key: int, task: str) -> np.random.Generator:
    """The generator of the ``task`` component of a composite drawn with ``key``:
    ``default_rng((key, crc32(task)))``, so each component has its own stream whatever the others."""
    return np.random.default_rng((key, zlib.crc32(task.encode())))


@dataclass
class Composite:
    """Apply several operators, one per task, in :data:`PHYSICAL_ORDER` (whatever order given).

    ``op(clean, rng)`` draws one key, ``key = int(rng.integers(2**63))``; component ``t`` then runs
    on the previous component's output with :func:`component_rng` ``(key, t)``. So
    ``degrade(img, "rain+noise", seed=s)`` equals, by hand::

        key = int(np.random.default_rng(s).integers(2**63))
        y = Rain()(img, component_rng(key, "derain")).image
        y = Noise()(y, component_rng(key, "denoise")).image

    The result's ``params`` and ``extras`` are those of each component, prefixed by its task
    (``"denoise.sigma"``, ``"derain.streaks"``).
    """

    ops: tuple[Degradation, ...]
    task: str = ""

    def __post_init__(self) -> None:
        tasks = [op.task for op in self.ops]
        if len(tasks) < 2:
            raise ValueError(f"a composite needs two or more degradations, got {len(tasks)}")
        for t in tasks:
            if t not in PHYSICAL_ORDER:
                raise ValueError(f"{t!r} has no place in the physical order ({', '.join(PHYSICAL_ORDER)})")
            if tasks.count(t) > 1:
                raise ValueError(f"a composite applies each degradation once; {t} is given twice")
        self.ops = tuple(sorted(self.ops, key=lambda op: PHYSICAL_ORDER.index(op.task)))
        self.task = composite_name(tasks)

    @property
    def tasks(self) -> tuple[str, ...]:
        """The components' tasks in the order applied."""
        return tuple(op.task for op in self.ops)

    @property
    def margin(self) -> int:
        return sum(degradation_margin(op) for op in self.ops)

    def __call__(self, clean: np.ndarray, rng: np.random.Generator) -> Degraded:
        return self.apply(clean, int(rng.integers(2**63)))

    def apply(self, clean: np.ndarray, key: int, skip: Sequence[str] = ()) -> Degraded:
        """The composite drawn with ``key``, leaving out the components of the tasks in ``skip``.

        The others get the very draws they get in the whole composite (their streams depend on
        ``key`` and their own task only): ``apply(clean, key, skip=["derain"])`` is the rain+noise
        photo as it would be without its rain - the training target that teaches a task to
        remove its own degradation and leave the others in place."""
        unknown = sorted(set(skip) - set(self.tasks))
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not a component of {self.task}")
        image = check_image(clean)
        params: dict[str, float] = {}
        extras: dict[str, np.ndarray] = {}
        for op in (op for op in self.ops if op.task not in skip):
            d = op(image, component_rng(key, op.task))
            image = d.image
            params.update({f"{op.task}.{k}": v for k, v in d.params.items()})
            extras.update({f"{op.task}.{k}": v for k, v in d.extras.items()})
        return Degraded(image, params, extras)
