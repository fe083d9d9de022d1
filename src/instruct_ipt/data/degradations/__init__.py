"""Degradation synthesis: one seeded operator per task, and composites of several (``"rain+noise"``).

Each operator is a dataclass of parameter ranges; ``op(clean, rng)`` takes a float32
``(H, W, 3)`` image in [0, 1] and a ``numpy.random.Generator`` and returns a :class:`Degraded`
(image, sampled parameters, auxiliary maps). Same generator state, same output.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .base import (
    Degradation,
    Degraded,
    Range,
    as_grey,
    check_image,
    convolve_reflect,
    degradation_margin,
    grey_degraded,
)
from .blur import MotionBlur, linear_kernel, trajectory, trajectory_kernel
from .composite import (
    ALIASES,
    NOUNS,
    PHYSICAL_ORDER,
    Composite,
    component_rng,
    component_task,
    composite_name,
    composite_tasks,
    is_composite,
)
from .haze import Haze, depth_proxy
from .jpeg import JPEG
from .noise import Noise
from .rain import Rain
from .snow import Snow

#: the default operator of each task name
DEGRADATIONS: dict[str, type] = {
    "denoise": Noise,
    "deblur": MotionBlur,
    "derain": Rain,
    "dehaze": Haze,
    "desnow": Snow,
    "jpeg": JPEG,
}


def make_degradation(task: str, **params) -> Degradation:
    """The operator for ``task`` with ``params`` overriding its default ranges.

    A composite name (``"rain+noise"``, ``"derain+denoise"``: see :mod:`.composite`) gives a
    :class:`Composite`; its ``params`` go per component, keyed by task or noun:
    ``make_degradation("rain+noise", noise={"sigma": 25})``."""
    if is_composite(task):
        tasks = composite_tasks(task)
        per_task: dict[str, dict] = {}
        for key, value in params.items():
            if not isinstance(value, Mapping):
                raise TypeError(f"parameters of a composite go per component, e.g. noise={{'sigma': 25}}; got {key}={value!r}")
            t = ALIASES.get(key)
            if t not in tasks:
                raise ValueError(f"{key!r} is not a component of {task!r}")
            per_task[t] = dict(value)
        return Composite(tuple(make_degradation(t, **per_task.get(t, {})) for t in tasks))
    if task not in DEGRADATIONS:
        raise ValueError(f"no degradation for task {task!r}; known: {', '.join(DEGRADATIONS)}")
    return DEGRADATIONS[task](**params)


def degrade(clean: np.ndarray, task: str, seed: int = 0, **params) -> Degraded:
    """Degrade one image for ``task`` (or a composite such as ``"haze+blur"``) with a fixed ``seed`` (reproducible)."""
    return make_degradation(task, **params)(clean, np.random.default_rng(seed))


__all__ = [
    "ALIASES",
    "DEGRADATIONS",
    "JPEG",
    "NOUNS",
    "PHYSICAL_ORDER",
    "Composite",
    "Degradation",
    "Degraded",
    "Haze",
    "MotionBlur",
    "Noise",
    "Rain",
    "Range",
    "Snow",
    "as_grey",
    "check_image",
    "component_rng",
    "component_task",
    "composite_name",
    "composite_tasks",
    "convolve_reflect",
    "degradation_margin",
    "degrade",
    "depth_proxy",
    "grey_degraded",
    "is_composite",
    "linear_kernel",
    "make_degradation",
    "trajectory",
    "trajectory_kernel",
]
