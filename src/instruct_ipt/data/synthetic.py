"""Training data: random crops of clean photos, degraded on the fly, each sample labelled with its task.

Every random choice of sample ``i`` in epoch ``e`` comes from ``numpy.random.default_rng((seed, e, i))``,
so a sample is the same whatever the number of DataLoader workers, their order, or the DDP rank
that draws it, and a resumed run sees the same data as an uninterrupted one.

``synthesis="device"`` moves the pixel work of the degradations out of the workers: a sample then
carries its clean crop, its operator's draws and a seed, and :class:`~.batched.BatchDegrader`
degrades whole batches on the training device (see :mod:`.batched`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from .batched import BatchDegrader, BatchedDegradation, batched
from .degradations import PHYSICAL_ORDER, Composite, Degradation, as_grey, degradation_margin, grey_degraded
from .images import list_images, read_rgb


def load_clean_images(sources: Sequence[str | os.PathLike | np.ndarray], min_size: int = 0) -> list[np.ndarray]:
    """Clean photos as uint8 (H, W, 3) arrays (kept in memory: 8 bits per value is enough for targets).

    ``sources`` mixes folders, image files and arrays (uint8, or float in [0, 1]). Images smaller
    than ``min_size`` on either side are refused by name, since crops would be mostly padding.
    """
    images: list[np.ndarray] = []
    for src in sources:
        if isinstance(src, np.ndarray):
            arr = src if src.dtype == np.uint8 else (np.clip(src, 0, 1) * 255 + 0.5).astype(np.uint8)
            if arr.ndim == 2:
                arr = np.repeat(arr[..., None], 3, axis=2)
            images.append(arr[..., :3])
            continue
        p = Path(src)
        files = list_images(p) if p.is_dir() else [p]
        if p.is_dir() and not files:
            raise FileNotFoundError(f"{p}: no images (png, jpg, bmp, tif, webp) in this folder")
        for f in files:
            images.append((read_rgb(f) * 255 + 0.5).astype(np.uint8))
    if not images:
        raise ValueError("no clean images given")
    small = [i for i, im in enumerate(images) if min(im.shape[:2]) < min_size]
    if small:
        raise ValueError(f"{len(small)} images are smaller than {min_size}px (indices {small[:5]})")
    return images


class TaskSampler:
    """Draws a task per sample with fixed weights (a mixed-task batch is a batch of these draws)."""

    def __init__(self, tasks: Sequence[str], weights: Mapping[str, float] | None = None) -> None:
        self.tasks = list(tasks)
        w = np.array([float((weights or {}).get(t, 1.0)) for t in self.tasks])
        unknown = sorted(set(weights or {}) - set(self.tasks))
        if unknown:
            raise ValueError(f"weights given for unknown tasks: {', '.join(unknown)}")
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError("task weights must be >= 0 and not all zero")
        self.probs = w / w.sum()

    def __call__(self, rng: np.random.Generator) -> int:
        return int(rng.choice(len(self.tasks), p=self.probs))


def random_crop(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    if h < size or w < size:  # reflect-pad small photos up to the patch size
        img = np.pad(img, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)), mode="reflect")
        h, w = img.shape[:2]
    top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return img[top : top + size, left : left + size]


def augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of the 8 flips/rotations of the square, uniformly."""
    k = int(rng.integers(0, 8))
    if k >= 4:
        img = img[:, ::-1]
    return np.ascontiguousarray(np.rot90(img, k % 4))


def to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()


class SyntheticDataset(Dataset):
    """``length`` samples per epoch: a random photo, crop, flip/rotation, then a task's degradation.

    Operators with a ``margin`` (blurs) degrade a crop that much larger and keep its centre: a patch
    is then blurred from the real scene around it, as in a whole photo, not from padding at its own
    border (with 64 px patches and 31 px kernels, that border is most of the patch).

    ``degradations`` maps each task to its operator; ``tasks`` fixes the task order (the model's),
    so ``sample['task']`` is the index the model expects. Samples are dicts with ``input`` and
    ``target`` (3, P, P) float tensors, ``task`` (int) and ``task_name``.

    ``grey_share``: that share of samples is a grey photo (:func:`~.degradations.as_grey` of the crop)
    degraded the same in every channel (:func:`~.degradations.grey_degraded`), as a grey file is:
    a model that never saw one treats three identical noisy channels as a colour photo whose noise
    happens to agree, and barely denoises it.

    ``composite_share``: that share of samples carries a second degradation besides its task's,
    drawn from ``companions`` (default: the other tasks of ``degradations``), both applied in the
    physical order (:class:`~.degradations.Composite`); the target keeps the companion in place
    (the same draws, without the task's own degradation), so each task learns to remove its own
    degradation only, in the presence of others, as real photos bring them (issue 23). Only
    with ``synthesis="workers"`` for now.

    ``identity_share``: that share of the synthetic samples is left without the task's degradation:
    the input *is* the target (the clean crop; with a composite, the crop with its companion only),
    so each task learns to leave a photo without its degradation alone. Blind mode guesses tasks from what
    a classifier sees, and a wrong guess then costs less (dehaze run on a haze-free photo took it to
    17.7 dB on average, 26.3 dB with a share of 0.2: ``benchmarks/wrong_task.py``, the figures in
    docs/instructions.md). Both syntheses.

    ``pairs``: real ``(degraded, clean)`` uint8 pairs per task (:func:`~.paired.load_training_pairs`).
    A task with pairs draws that share of its samples (``paired_share``, default 0.5) from them and
    the rest from its operator; a task with pairs and no operator (a task of the user's own, which
    no synthetic degradation makes) draws all of them from its pairs. A paired sample is cropped at
    the same place in both images and given the same flip/rotation. Workers synthesis only.

    ``synthesis="device"``: the operators are wrapped with :func:`~.batched.batched`; after the same
    draws of task, photo, crop and flip, a sample holds ``clean`` (3, S, S) uint8, S = P + 2M with M
    :attr:`margin`, the largest margin of the operators (a task's own P + 2m crop centred, the rest
    zero), ``draws`` (its operator's parameters), ``seed`` (of its random fields) and the flags
    ``grey`` and ``identity``, besides ``task`` and ``task_name``. Batch with :func:`~.batched.collate_device`, degrade with :meth:`degrader`.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        degradations: Mapping[str, Degradation],
        patch_size: int = 128,
        length: int = 1000,
        task_weights: Mapping[str, float] | None = None,
        tasks: Sequence[str] | None = None,
        seed: int = 0,
        synthesis: Literal["workers", "device"] = "workers",
        grey_share: float = 0.0,
        composite_share: float = 0.0,
        identity_share: float = 0.0,
        companions: Mapping[str, Degradation] | None = None,
        pairs: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]] | None = None,
        paired_share: float | Mapping[str, float] = 0.5,
    ) -> None:
        self.pairs = {t: list(p) for t, p in (pairs or {}).items()}
        if not images and degradations:
            raise ValueError(f"no clean images for the synthetic tasks ({', '.join(degradations)})")
        self.images = list(images)
        self.tasks = list(tasks) if tasks is not None else list(dict.fromkeys([*degradations, *self.pairs]))
        missing = [t for t in [*degradations, *self.pairs] if t not in self.tasks]
        if missing:
            raise ValueError(f"degradations or pairs for tasks the model lacks: {', '.join(missing)}")
        small = [f"{t} ({c.shape[1]}x{c.shape[0]})" for t, p in self.pairs.items() for _, c in p
                 if min(c.shape[:2]) < patch_size]
        if small:  # checked once here, not per sample in the workers
            raise ValueError(f"pairs smaller than the {patch_size}px patch: {', '.join(small[:3])}")
        empty = [t for t, p in self.pairs.items() if not p]
        if empty:
            raise ValueError(f"no pairs for {', '.join(empty)}")
        self.degradations = dict(degradations)
        self.active = [t for t in self.tasks if t in self.degradations or t in self.pairs]
        if not self.active:
            raise ValueError("nothing to train on: no degradations and no pairs")
        shares = paired_share if isinstance(paired_share, Mapping) else {t: paired_share for t in self.pairs}
        self.paired_share = {t: float(shares.get(t, 0.5)) if t in self.degradations else 1.0 for t in self.pairs}
        if any(not 0 <= v <= 1 for v in self.paired_share.values()):
            raise ValueError(f"paired_share must be in [0, 1], got {dict(shares)}")
        if self.pairs and synthesis == "device":
            raise ValueError('pairs need synthesis="workers" (paired samples are cut in the workers)')
        self.sampler = TaskSampler(self.active, task_weights)
        self.patch_size = patch_size
        self.length = length
        self.seed = seed
        self.epoch = 0
        if not 0 <= grey_share <= 1:
            raise ValueError(f"grey_share must be in [0, 1], got {grey_share}")
        self.grey_share = grey_share
        if not 0 <= composite_share <= 1:
            raise ValueError(f"composite_share must be in [0, 1], got {composite_share}")
        self.composite_share = composite_share
        if not 0 <= identity_share <= 1:
            raise ValueError(f"identity_share must be in [0, 1], got {identity_share}")
        self.identity_share = identity_share
        self.companions = dict(degradations if companions is None else companions)
        if composite_share > 0:
            if synthesis == "device":
                raise ValueError('composite_share needs synthesis="workers" (device synthesis of composites is not written yet)')
            unplaced = sorted({getattr(o, "task", "?") for o in [*self.degradations.values(), *self.companions.values()]}
                              - set(PHYSICAL_ORDER))
            if unplaced:
                raise ValueError(f"composite_share: {', '.join(unplaced)} has no place in the physical order "
                                 f"({', '.join(PHYSICAL_ORDER)}), so it cannot join a composite")
            lonely = [t for t in self.active if not any(c != t for c in self.companions)]
            if lonely:
                raise ValueError(f"composite_share: no companion degradation for {', '.join(lonely)} (give companions)")
        if synthesis not in ("workers", "device"):
            raise ValueError(f"synthesis must be 'workers' or 'device', got {synthesis!r}")
        self.synthesis = synthesis
        self.margin = max((degradation_margin(op) for op in self.degradations.values()), default=0)
        self.batched: dict[str, BatchedDegradation] = (
            {t: batched(op) for t, op in self.degradations.items()} if synthesis == "device" else {}
        )

    def degrader(self) -> BatchDegrader:
        """The device step for this dataset's batches (``synthesis="device"``)."""
        if self.synthesis != "device":
            raise ValueError('degrader() needs synthesis="device"')
        return BatchDegrader(self.batched, self.patch_size, self.margin)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def _paired_sample(self, name: str, rng: np.random.Generator) -> dict:
        """A crop of one of ``name``'s pairs: the same window and flip/rotation in both images."""
        pairs = self.pairs[name]
        degraded, clean = pairs[int(rng.integers(len(pairs)))]
        p = self.patch_size
        top, left = int(rng.integers(0, clean.shape[0] - p + 1)), int(rng.integers(0, clean.shape[1] - p + 1))
        turn = int(rng.integers(2**63))  # one draw for both images: the same flip/rotation
        degraded = augment(degraded[top : top + p, left : left + p], np.random.default_rng(turn))
        clean = augment(clean[top : top + p, left : left + p], np.random.default_rng(turn))
        if self.grey_share > 0 and bool(rng.random() < self.grey_share):
            degraded, clean = as_grey(degraded), as_grey(clean)
        return {
            "input": to_tensor(degraded.astype(np.float32) / 255.0),
            "target": to_tensor(clean.astype(np.float32) / 255.0),
            "task": self.tasks.index(name),
            "task_name": name,
        }

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng((self.seed, self.epoch, index))
        name = self.active[self.sampler(rng)]
        # a task without pairs makes no extra draw: its samples stay those of a run without pairs
        if name in self.pairs and (name not in self.degradations or rng.random() < self.paired_share[name]):
            return self._paired_sample(name, rng)
        img = self.images[int(rng.integers(len(self.images)))]
        op = self.degradations[name]
        if self.composite_share > 0 and rng.random() < self.composite_share:  # no draw at share 0: samples as before
            others = [c for c in self.companions if c != name]
            op = Composite((op, self.companions[others[int(rng.integers(len(others)))]]))
        m = degradation_margin(op)
        crop = augment(random_crop(img, self.patch_size + 2 * m, rng), rng)
        grey = self.grey_share > 0 and bool(rng.random() < self.grey_share)  # no draw at share 0: samples as before
        if grey:
            crop = as_grey(crop)
        clean = crop.astype(np.float32) / 255.0
        # no draw at share 0: samples as before. On the device an identity sample still draws its
        # parameters (a task's draws stack in the batch) and the degrader puts the target in its place.
        identity = self.identity_share > 0 and bool(rng.random() < self.identity_share)
        if self.synthesis == "device":
            draws = self.batched[name].draw(clean, rng)
            canvas = np.zeros((3,) + (self.patch_size + 2 * self.margin,) * 2, np.uint8)
            o, n = self.margin - m, self.patch_size + 2 * m
            canvas[:, o : o + n, o : o + n] = crop.transpose(2, 0, 1)
            return {
                "clean": torch.from_numpy(canvas),
                "task": self.tasks.index(name),
                "task_name": name,
                "seed": int(rng.integers(2**63)),
                "draws": draws,
                "grey": grey,
                "identity": identity,
            }
        if isinstance(op, Composite):
            key = int(rng.integers(2**63))
            kept = op.apply(clean, key, skip=[name]).image  # the companion stays in the target
            degraded = kept if identity else op.apply(clean, key).image
            clean = kept
        else:
            degraded = clean if identity else op(clean, rng).image
        if grey:
            degraded, clean = grey_degraded(degraded), grey_degraded(clean)
        if m:
            clean, degraded = clean[m:-m, m:-m], degraded[m:-m, m:-m]
        return {
            "input": to_tensor(degraded),
            "target": to_tensor(clean),
            "task": self.tasks.index(name),
            "task_name": name,
        }
