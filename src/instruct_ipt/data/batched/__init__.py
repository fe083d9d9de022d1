"""Degradations synthesised on the training device, in batches, with torch.

Each NumPy operator of :mod:`..degradations` has a counterpart here that splits it in two: ``draw``
(NumPy, in the DataLoader worker: the sample's parameters and small kernels, drawn from the
sample's generator) and ``apply`` (torch, on any device: the pixels, for a whole task group of the
batch at once). Deterministic parts match the NumPy operator given the same draws; random fields
(noise, seed maps) come from a torch generator seeded per sample, so they share the NumPy
distribution, not its exact draws.

Use ``SyntheticDataset(..., synthesis="device")`` with :func:`collate_device` as the DataLoader's
``collate_fn`` and :class:`BatchDegrader` (or ``dataset.degrader()``) in the training step.
"""

from __future__ import annotations

from ..degradations import JPEG, Degradation, Haze, MotionBlur, Noise, Rain, Snow
from .base import BatchedDegradation
from .blur import BatchedMotionBlur
from .collate import BatchDegrader, collate_device
from .haze import BatchedHaze
from .jpeg import BatchedJPEG
from .noise import BatchedNoise
from .rain import BatchedRain
from .snow import BatchedSnow

_COUNTERPARTS: dict[type, type] = {
    Noise: BatchedNoise,
    MotionBlur: BatchedMotionBlur,
    Rain: BatchedRain,
    Haze: BatchedHaze,
    Snow: BatchedSnow,
    JPEG: BatchedJPEG,
}


def batched(op: Degradation) -> BatchedDegradation:
    """The batched counterpart of a NumPy operator, wrapping it (its ranges are read from it).

    Matched on the exact type: a subclass may change what ``__call__`` does, which the counterpart
    would silently not reproduce.
    """
    cls = _COUNTERPARTS.get(type(op))
    if cls is None:
        known = ", ".join(t.__name__ for t in _COUNTERPARTS)
        raise TypeError(f"no batched counterpart for {type(op).__name__}; known: {known}")
    return cls(op)


__all__ = [
    "BatchDegrader",
    "BatchedDegradation",
    "BatchedHaze",
    "BatchedJPEG",
    "BatchedMotionBlur",
    "BatchedNoise",
    "BatchedRain",
    "BatchedSnow",
    "batched",
    "collate_device",
]
