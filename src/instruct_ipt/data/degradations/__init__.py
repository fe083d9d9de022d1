"""Degradation synthesis: one seeded operator per task.

Each operator is a dataclass of parameter ranges; ``op(clean, rng)`` takes a float32
``(H, W, 3)`` image in [0, 1] and a ``numpy.random.Generator`` and returns a :class:`Degraded`
(image, sampled parameters, auxiliary maps). Same generator state, same output.
"""

from __future__ import annotations

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
    """The operator for ``task`` with ``params`` overriding its default ranges."""
    if task not in DEGRADATIONS:
        raise ValueError(f"no degradation for task {task!r}; known: {', '.join(DEGRADATIONS)}")
    return DEGRADATIONS[task](**params)


def degrade(clean: np.ndarray, task: str, seed: int = 0, **params) -> Degraded:
    """Degrade one image for ``task`` with a fixed ``seed`` (reproducible)."""
    return make_degradation(task, **params)(clean, np.random.default_rng(seed))


__all__ = [
    "DEGRADATIONS",
    "JPEG",
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
    "convolve_reflect",
    "degradation_margin",
    "degrade",
    "depth_proxy",
    "grey_degraded",
    "linear_kernel",
    "make_degradation",
    "trajectory",
    "trajectory_kernel",
]
