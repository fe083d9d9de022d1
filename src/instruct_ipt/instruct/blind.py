"""Blind mode: a light CNN that tells which degradations an image has, when no task is given.

Two kinds share one architecture. A *single-label* classifier (softmax) names the one most likely
degradation. A *multi-label* one (a sigmoid per task, each with its own threshold calibrated on
held-out photos) names every degradation it sees, none for a clean photo, so blind mode can undo
rain *and* noise, or leave a good photo alone. A single-label one with :class:`Peeling` names
several too, with the restoration model's help: it removes the main degradation from a crop, looks
again, and goes on while it still sees one clearly (see :meth:`DegradationClassifier.detect`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.degradations import Composite, Degradation, make_degradation
from ..data.synthetic import TaskSampler, augment, random_crop, to_tensor
from ..data.validation import center_crop
from ..io import NPZ_READ_ERRORS, atomic_write, load_tagged, save_tagged
from .order import order_tasks

BLIND_FORMAT = "instruct-ipt-degradation-classifier"
BLIND_FILE = "degradation_classifier.safetensors"

#: ``restore(image, task) -> image``: one task of the restoration model on a float (H, W, 3) image.
Restore = Callable[[np.ndarray, str], np.ndarray]
#: side of the central crop that peeling restores and looks at again (384 px: about 1 s a step on 2 CPU cores)
PEEL_REGION = 384
#: the extra class of a classifier with ``clean_class``: no degradation at all, "nothing to do"
CLEAN = "clean"
#: side of a JPEG block (luma DCT block): the grid :func:`jpeg_grid_phase` finds
JPEG_BLOCK = 8
#: the task that removes JPEG blocks: the one :attr:`Peeling.blocks` tests with the block grid
JPEG_TASK = "jpeg"


class UncalibratedPeelingWarning(UserWarning):
    """Blind mode peels with a restoration model other than the one its thresholds were calibrated
    with (:attr:`Peeling.model`): what it names after the first task, and its check that the first
    task changes the photo, rest on another model's restorations."""


def _block_steps(gray: np.ndarray, axis: int) -> np.ndarray | None:
    """The mean absolute step between neighbouring lines of ``gray`` along ``axis``, pooled by the
    line's position in its 8 px block (entry ``k``: between lines ``8i + k`` and ``8i + k + 1``);
    None for an axis shorter than two blocks."""
    steps = np.abs(np.diff(gray, axis=axis)).mean(axis=1 - axis)  # steps[k]: between lines k and k + 1
    n = len(steps) // JPEG_BLOCK * JPEG_BLOCK
    return None if n < 2 * JPEG_BLOCK else steps[:n].reshape(-1, JPEG_BLOCK).mean(0)


def jpeg_grid_phase(rgb: np.ndarray) -> tuple[int, int]:
    """Where the 8 x 8 JPEG block grid of ``rgb`` (float (H, W, 3) or (H, W)) starts: ``(row, column)``
    of its first block corner, each in 0..7 - (0, 0) for an image as saved, another phase for one
    cropped after saving.

    Why: JPEG quantises each block on its own, so the step between neighbouring pixels is larger,
    on average, across a block border than inside a block; the mean absolute step between columns
    ``x`` and ``x + 1``, pooled by ``x mod 8``, peaks at the border (likewise for rows). On an image
    that was never compressed no phase stands out and the answer is arbitrary - harmless to
    :meth:`DegradationClassifier.predict`, which then only moves its crops by a few pixels. An axis
    shorter than two blocks gives phase 0."""
    gray = rgb.mean(-1) if rgb.ndim == 3 else rgb
    phases = []
    for axis in (0, 1):
        pooled = _block_steps(gray, axis)
        phases.append(0 if pooled is None else (int(np.argmax(pooled)) + 1) % JPEG_BLOCK)  # after a block's last line
    return phases[0], phases[1]


def jpeg_block_strength(rgb: np.ndarray) -> float:
    """How plainly ``rgb`` (float (H, W, 3) or (H, W)) shows a JPEG block grid: per axis, the pooled
    step of :func:`jpeg_grid_phase` at the border over the median of the other seven positions; the
    weaker axis's (JPEG quantises blocks both ways, so both show it). Near 1 where no position stands
    out, as in an image never compressed. 1 for an axis shorter than two blocks or an image without
    steps (no evidence).

    Why: it is a measurement, not a guess. A classifier can take the fine structure a restoration
    leaves for JPEG artefacts and a restoration model changes any image a little, so blind mode's
    test for JPEG blocks left after another task (:class:`Peeling`) cannot tell; the grid can."""
    gray = rgb.mean(-1) if rgb.ndim == 3 else rgb
    ratios = []
    for axis in (0, 1):
        pooled = _block_steps(gray, axis)
        if pooled is None:
            return 1.0
        k = int(np.argmax(pooled))
        rest = float(np.median(np.delete(pooled, k)))
        ratios.append(float(pooled[k]) / rest if rest > 0 else 1.0)
    return min(ratios)


def _on_grid(offsets: np.ndarray, phase: int, last: int) -> list[int]:
    """Each offset moved back to the nearest block corner at ``phase`` (forward when that is
    before 0; kept where the crop would then end past ``last``, the largest offset that fits)."""
    moved = []
    for o in offsets.tolist():
        a = phase + (o - phase) // JPEG_BLOCK * JPEG_BLOCK
        a += JPEG_BLOCK if a < 0 else 0
        moved.append(a if a <= last else o)
    return moved


@dataclass
class Peeling:
    """How a single-label classifier names several degradations, or none, by *peeling*.

    The softmax knows *which* degradation dominates a photo far better than per-task sigmoid scores
    (docs/instructions.md has the figures), but names exactly one. Peeling asks it again after the
    restoration model has removed that one: what is left then dominates.

    ``start[t]``: the softmax probability of ``t``, the main degradation, at which blind mode acts at
    all (below it, "nothing to do"; a task not in ``start`` always acts). A further task ``t`` (the
    most likely one on the restored crop) is named when it is in ``further`` and removing it changes
    the crop by at least ``further[t]`` (root-mean-square, on [0, 1] pixels): the model's own
    residual, which tells whether any noise is left far better than the classifier's probability
    does on photos it has not seen (docs/instructions.md has the figures). Both are calibrated per
    task on held-out photos (:func:`calibrate_peeling`). The looking again happens on the central
    ``region`` x ``region`` crop, so that it costs the same on any photo; at most ``max_tasks`` are
    named (2 by default: the calibration images carry at most two degradations, so a third step's
    test would be uncalibrated).

    ``clean`` (a classifier with a clean class): the clean probability at which blind mode says
    "nothing to do", in place of ``start`` (None: when clean is the most likely class); a further
    task must then also be more likely than clean on the restored crop.

    ``first_change[t]``: the main task ``t`` is named only when removing it changes the crop by at
    least this much (the ``further`` test, asked of the first task too; a task not in it always
    acts). A clean photo that the classifier takes for a noisy one (a fine texture) hardly changes
    when denoised, a noisy one does - the residual tells them apart on photos the classifier never
    saw, where its probabilities do not (docs/instructions.md has the figures). It costs nothing:
    the first restoration is the one peeling looks at again anyway.

    ``suggest[t]``: a task ``t`` that blind mode does not *run* after the first but *mentions*
    ("possibly also ...", :attr:`Detection.suggested`) when it passes the further test with this
    threshold, as the step after the last task named (while fewer than ``max_tasks`` are) - for a
    degradation the calibration can name but that, named, would cost photos with one degradation
    elsewhere (haze: docs/instructions.md has the figures). The user, who sees the photo, decides.
    Not in ``further``: a task is either run or mentioned.

    ``model``: the restoration model the thresholds were calibrated with (:func:`~instruct_ipt.io.weights_digest`
    of its weights; None: not recorded). ``further``, ``first_change`` and ``suggest`` are measured
    on that model's restorations, so another model (one trained by a user, or a new default) needs
    its own calibration; :class:`~instruct_ipt.pipeline.RestorationPipeline` warns
    (:class:`UncalibratedPeelingWarning`) when blind mode peels with another one.

    ``blocks``: JPEG (:data:`JPEG_TASK`) is named after the first task, or suggested, only when the
    central crop of the image shows a block grid at least this plainly (:func:`jpeg_block_strength`;
    None: no such test). Whether blocks are left is measured on the image itself, not asked of the
    classifier or the restoration model: on a restored crop the classifier may take what the
    restoration leaves for JPEG artefacts, and removing "JPEG" changes any image a little
    (docs/instructions.md has the figures). Not asked of the first task: the classifier's first
    look names JPEG where it is (a faint grid from a high JPEG quality would then be missed).
    Calibrated on the same held-out images as the rest (:func:`block_threshold`).

    ``asked``: what the calibration was asked for (:func:`choose_peeling`'s ``further_tasks`` - None
    for every task -, ``first_tasks``, ``suggest_tasks``, ``gate`` and ``jpeg_blocks``), which :meth:`choices` gives to
    the next calibration. The thresholds alone do not say it: a task asked for but never seen second
    in one walk gets no ``further`` threshold, and a calibration asking only what the last one
    found would lose it for good. Not compared (``==`` compares thresholds); None in files saved
    before it was recorded.
    """

    start: dict[str, float]
    further: dict[str, float]
    region: int = PEEL_REGION
    max_tasks: int = 2
    clean: float | None = None
    first_change: dict[str, float] = field(default_factory=dict)
    suggest: dict[str, float] = field(default_factory=dict)
    model: str | None = None
    asked: dict[str, Any] | None = field(default=None, compare=False)
    blocks: float | None = None

    def __post_init__(self) -> None:
        if self.region < 32 or self.max_tasks < 1:
            raise ValueError(f"peeling region {self.region} (at least 32 px) and max_tasks {self.max_tasks} (at least 1)")
        if self.clean is not None and not 0.0 <= self.clean <= 1.0:
            raise ValueError(f"peeling clean threshold {self.clean}: a probability, in [0, 1]")
        if self.blocks is not None and not np.isfinite(self.blocks):
            raise ValueError(f"peeling block-grid threshold {self.blocks}: a finite ratio")
        _check_apart(self.further, self.suggest)

    def tasks(self) -> set[str]:
        """Every task a threshold names (each must be one of the classifier's)."""
        return (set(self.start) | set(self.further) | set(self.first_change) | set(self.suggest)
                | ({JPEG_TASK} if self.blocks is not None else set()))

    def blocks_seen(self, rgb: np.ndarray) -> bool:
        """Whether JPEG may be named on ``rgb`` (the whole image): its central :attr:`region` crop
        shows the block grid at least as plainly as :attr:`blocks` (always, without that test)."""
        return self.blocks is None or jpeg_block_strength(center_crop(rgb, self.region)) >= self.blocks

    def choices(self) -> dict[str, Any]:
        """What calibrating these thresholds asked for, as keyword arguments of :func:`choose_peeling`
        and :func:`calibrate_peeling`: the tasks named after the first (those that got a ``further``
        threshold), the first-change and suggested tasks, the gate, the block-grid test, the region and ``max_tasks`` - so
        that a calibration for another restoration model asks the same questions of its walk. These
        are :attr:`asked` where recorded; for an older file, rebuilt from the thresholds (a task
        asked for but never given a threshold is then not asked again)."""
        asked = self.asked or {"further_tasks": list(self.further), "first_tasks": list(self.first_change),
                               "suggest_tasks": list(self.suggest), "gate": self.clean is not None or bool(self.start)}
        return {"further_tasks": None if asked["further_tasks"] is None else list(asked["further_tasks"]),
                "first_tasks": list(asked["first_tasks"]), "suggest_tasks": list(asked["suggest_tasks"]),
                "gate": bool(asked["gate"]), "jpeg_blocks": bool(asked.get("jpeg_blocks", self.blocks is not None)),
                "region": self.region, "max_tasks": self.max_tasks}

    def to_meta(self) -> dict[str, str]:
        """As strings for the classifier file's safetensors metadata (no pickled objects in a file)."""
        meta = {"peel_start": json.dumps(self.start), "peel_further": json.dumps(self.further),
                "peel_region": str(self.region), "peel_max_tasks": str(self.max_tasks)}
        meta |= {} if self.clean is None else {"peel_clean": str(self.clean)}
        meta |= {"peel_suggest": json.dumps(self.suggest)} if self.suggest else {}
        meta |= {} if self.model is None else {"peel_model": self.model}
        meta |= {} if self.asked is None else {"peel_asked": json.dumps(self.asked)}
        meta |= {} if self.blocks is None else {"peel_blocks": str(float(self.blocks))}
        return meta | ({"peel_first_change": json.dumps(self.first_change)} if self.first_change else {})

    @classmethod
    def from_meta(cls, meta: Mapping[str, str]) -> Peeling | None:
        """The peeling saved by :meth:`to_meta`, or None for a classifier file without one."""
        if "peel_start" not in meta:
            return None
        try:
            clean = float(meta["peel_clean"]) if "peel_clean" in meta else None
            return cls(json.loads(meta["peel_start"]), json.loads(meta["peel_further"]), int(meta["peel_region"]),
                       int(meta["peel_max_tasks"]), clean, json.loads(meta.get("peel_first_change", "{}")),
                       json.loads(meta.get("peel_suggest", "{}")), meta.get("peel_model"),
                       json.loads(meta["peel_asked"]) if "peel_asked" in meta else None,
                       float(meta["peel_blocks"]) if "peel_blocks" in meta else None)
        except KeyError as e:  # written by hand or damaged: say what is missing, not a bare KeyError
            raise ValueError(f"its peeling thresholds are incomplete (no {e.args[0]})") from None
        except (TypeError, ValueError) as e:
            raise ValueError(f"its peeling thresholds are malformed ({e})") from None


@dataclass
class Detection:
    """What blind mode sees in an image (:meth:`DegradationClassifier.examine`): ``found``, the
    degradations it names and runs, as ``(task, probability)`` in restoration order (none: a clean
    photo); ``suggested``, ones it does not run but that may be there too (:attr:`Peeling.suggest`;
    the probability seen once the found ones were removed) - for the user, who sees the photo, to name."""

    found: list[tuple[str, float]]
    suggested: list[tuple[str, float]] = field(default_factory=list)


class PeelStep:
    """One step of :meth:`DegradationClassifier.peel_steps`: the ``task`` seen (with ``prob``) on
    the crop ``before``; ``clean``, the probability of :data:`CLEAN` seen with it (None for a
    classifier without a clean class); ``restored`` (computed when first asked for: one
    restoration) and ``change``, the root-mean-square difference it makes."""

    def __init__(self, task: str, prob: float, before: np.ndarray, restore: Restore, clean: float | None = None) -> None:
        self.task, self.prob, self.before, self._restore = task, float(prob), before, restore
        self.clean = None if clean is None else float(clean)

    @cached_property
    def restored(self) -> np.ndarray:
        """``before`` with this step's task removed, clipped to [0, 1] (computed once, when first asked for)."""
        return np.clip(self._restore(self.before, self.task), 0.0, 1.0)

    @property
    def change(self) -> float:
        """Root-mean-square difference between ``restored`` and ``before``: how much removing the task did."""
        return float(np.sqrt(np.mean((self.restored - self.before) ** 2)))


class DegradationClassifier(nn.Module):
    """Full-resolution convs (noise and JPEG live in single pixels), then strided ones; the mean and
    standard deviation of the last features over the image feed a linear layer over the tasks.

    ``multilabel``: one independent score per task (sigmoid) instead of one choice among them
    (softmax); ``thresholds`` (task -> probability) then decide which tasks :meth:`detect` names.

    ``primary`` (multi-label only): a single-label classifier of the same tasks that names the main
    degradation. The multi-label scores then decide *whether* anything is there (none over its
    ``thresholds``: a clean photo) and which *other* degradations come with the main one (each over
    its ``extra_thresholds``), while the main one is the single-label choice - right far more often
    on photos with one degradation than a threshold on a sigmoid (docs/instructions.md has the
    figures). Saved in the same file. It places its crops as the classifier it is attached to
    (:attr:`align_blocks`, :attr:`min_positions`: set on that one, they hold for both), so that the
    two judge the same crops, the calibration's and a user's alike.

    ``peeling`` (single-label only): name several degradations or none, with the restoration
    model's help (:class:`Peeling`); saved in the file's metadata.

    ``clean_class`` (single-label only): one more class, :data:`CLEAN`, for a photo with no
    degradation, learnt from clean examples - without it a softmax over tasks must name one on
    a clean photo, and a soft or hazy-looking one gets deblur or dehaze. :meth:`predict` then
    gives its probability too (under ``"clean"``), and :meth:`detect` names nothing when it is the
    most likely class (or, with :attr:`peeling`, when it reaches ``peeling.clean``).

    ``align_blocks``: :meth:`predict` starts its crops on the image's JPEG block grid
    (:func:`jpeg_grid_phase`). A classifier trained on squares compressed whole (``context`` equal
    to the patch, as the shipped one) has seen JPEG blocks only with a block corner at the crop's
    corner, and reads them at few other phases; a photo cropped after saving, or a crop that starts
    mid-block, then hides its blocks. Saved in the file's metadata.

    ``min_positions`` (1 to 4): :meth:`predict` puts at least this many crops along each side of an
    image larger than a crop (overlapping where they must). The plain grid (``side // crop``
    crops, at most 4) leaves an image between one and two crops wide with one crop - a 200 px
    image is judged by its top-left 128 px, the rest never seen - and judges a 256 px one by four
    crops where a photo gets sixteen; a degradation the classifier reads well on most crops of a
    photo then hangs on one or two. Photos with both sides at least three crops long are unchanged.
    Saved in the file's metadata.

    ``downsamplings`` (1 to 5): the stride-2 convolutions after the two full-resolution ones. With
    the shipped three, each feature sees 19 x 19 px - less than the default blur's longer streaks
    (linear 5-25 px, camera shake in a 31 px kernel), far less than a veil of haze spans; a fourth
    widens that to 35 px, a fifth to 67 px, at little cost (they work at 1/16 and 1/32 of the
    resolution). Saved in the file's metadata (absent: three).
    """

    def __init__(self, tasks: Sequence[str], width: int = 32, multilabel: bool = False,
                 thresholds: Mapping[str, float] | None = None, primary: DegradationClassifier | None = None,
                 extra_thresholds: Mapping[str, float] | None = None, peeling: Peeling | None = None,
                 clean_class: bool = False, align_blocks: bool = False, min_positions: int = 1,
                 downsamplings: int = 3) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.width = width
        if not 1 <= downsamplings <= 5:  # (a 96 px training square is 3 px across after five)
            raise ValueError(f"downsamplings {downsamplings}: 1 to 5 stride-2 convolutions")
        self.downsamplings = downsamplings
        self.multilabel = multilabel
        self.align_blocks = align_blocks
        self.min_positions = min_positions
        if peeling is not None and multilabel:
            raise ValueError("peeling belongs to a single-label classifier")
        if clean_class and multilabel:
            raise ValueError("a clean class belongs to a single-label classifier (a multi-label one names none by its thresholds)")
        if CLEAN in self.tasks:
            raise ValueError(f"{CLEAN!r} names the clean class, not a task")
        if peeling is not None and peeling.region < self.smallest_side:
            raise ValueError(f"peeling region {peeling.region} px: this classifier judges images of at least "
                             f"{self.smallest_side} px a side")
        if peeling is not None and peeling.clean is not None and not clean_class:
            raise ValueError("a peeling clean threshold needs a classifier with a clean class")
        self.clean_class = clean_class
        #: what :meth:`predict` scores: the tasks, then :data:`CLEAN` with ``clean_class``
        self.classes = self.tasks + [CLEAN] * clean_class
        self.peeling = peeling
        unknown = sorted((set(thresholds or {}) | set(extra_thresholds or {})
                          | (peeling.tasks() if peeling else set())) - set(self.tasks))
        if unknown:
            raise ValueError(f"thresholds for unknown tasks: {', '.join(unknown)}")
        if extra_thresholds is not None and primary is None:
            raise ValueError("extra thresholds go with a primary classifier")
        self.primary: DegradationClassifier | None = None
        self.extra_thresholds: dict[str, float] = {}
        if primary is not None:
            self.attach_primary(primary, extra_thresholds)
        self.thresholds = {t: float((thresholds or {}).get(t, 0.5)) for t in self.tasks}
        w = width
        widths = ([w, 2 * w, 2 * w, 4 * w] + [4 * w] * 2)[: downsamplings + 1]  # the shipped: three
        layers: list[nn.Module] = [nn.Conv2d(3, w, 3, padding=1), nn.GELU(), nn.Conv2d(w, w, 3, padding=1), nn.GELU()]
        for a, b in itertools.pairwise(widths):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.GELU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(2 * widths[-1], len(self.classes))

    def attach_primary(self, primary: DegradationClassifier, extra_thresholds: Mapping[str, float] | None = None) -> None:
        """Let the single-label ``primary`` name the main degradation (see the class docstring);
        the extra thresholds start at 0.5 until :func:`calibrate_thresholds`."""
        if not self.multilabel or primary.multilabel:
            raise ValueError("a primary classifier is a single-label one, attached to a multi-label one")
        if primary.clean_class:
            raise ValueError("a primary classifier names the main degradation: one without a clean class (the multi-label "
                             "scores decide whether anything is there)")
        if primary.tasks != self.tasks:
            raise ValueError(f"the primary classifier knows {primary.tasks}, this one {self.tasks}")
        self.primary = primary.eval()
        primary.align_blocks, primary.min_positions = self.align_blocks, self.min_positions  # one grid for both
        self.extra_thresholds = {t: float((extra_thresholds or {}).get(t, 0.5)) for t in self.tasks}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x - 0.5)
        return self.classifier(torch.cat([f.mean((2, 3)), f.std((2, 3))], dim=1))

    @torch.inference_mode()
    def predict(self, rgb: np.ndarray, crop: int = 128, max_crops: int = 16) -> dict[str, float]:
        """Task probabilities for a float (H, W, 3) image, averaged over a grid of crops: they sum
        to 1 (softmax) for a single-label classifier, with :data:`CLEAN`'s if it has a clean
        class; each is the chance that degradation is present (sigmoid) for a multi-label one.
        With :attr:`align_blocks`, each crop starts at a JPEG block corner (moved by at most 7 px);
        with :attr:`min_positions`, at least that many crops lie along each side (see the class)."""
        self.eval()
        p = next(self.parameters())
        h, w = rgb.shape[:2]
        if min(h, w) < self.smallest_side:
            raise ValueError(f"a {w}x{h} image is too small for blind mode to judge (at least {self.smallest_side} px a "
                             "side): name the task instead")
        crop = min(crop, min(h, w))
        rows, cols = (np.linspace(0, side - crop, self._positions(side, crop)).astype(int) for side in (h, w))
        if self.align_blocks:
            dy, dx = jpeg_grid_phase(rgb)
            rows, cols = _on_grid(rows, dy, h - crop), _on_grid(cols, dx, w - crop)
        tiles = [rgb[r : r + crop, c : c + crop] for r in rows for c in cols][:max_crops]
        x = torch.from_numpy(np.stack(tiles).transpose(0, 3, 1, 2).copy()).to(p.device, p.dtype)
        logits = self(x)
        probs = (logits.sigmoid() if self.multilabel else logits.softmax(-1)).mean(0)
        if not torch.isfinite(probs).all():  # NaN pixels in the crops: NaN fails every threshold test silently
            raise ValueError("the image holds pixels that are not numbers (NaN or infinite): blind mode cannot judge it")
        return {t: float(v) for t, v in zip(self.classes, probs)}

    @property
    def smallest_side(self) -> int:
        """The smallest image side :meth:`predict` judges: below it the last features are one pixel,
        whose standard deviation (half of what the classifier reads) does not exist."""
        return 2 ** self.downsamplings + 1

    @property
    def min_positions(self) -> int:
        """Crops along each side of an image larger than one crop, at least (see the class); a
        :attr:`primary`'s too."""
        return self._min_positions

    @min_positions.setter
    def min_positions(self, n: int) -> None:
        if not 1 <= n <= 4:  # (the grid holds at most 4 x 4 crops)
            raise ValueError(f"min_positions {n}: 1 to 4 crops along a side")
        self._min_positions = int(n)
        if getattr(self, "primary", None) is not None:
            self.primary.min_positions = n

    @property
    def align_blocks(self) -> bool:
        """Whether :meth:`predict`'s crops start on the JPEG block grid (see the class); a :attr:`primary`'s too."""
        return self._align_blocks

    @align_blocks.setter
    def align_blocks(self, on: bool) -> None:
        self._align_blocks = bool(on)
        if getattr(self, "primary", None) is not None:
            self.primary.align_blocks = on

    def grid_key(self) -> dict[str, object]:
        """How :meth:`predict` places its crops, for the key of recorded walks (:func:`save_walks`): what
        differs from the plain grid only, so that walks recorded before these options still read."""
        return ({"align_blocks": True} if self.align_blocks else {}) | (
            {"min_positions": self.min_positions} if self.min_positions != 1 else {})

    def _positions(self, side: int, crop: int) -> int:
        """How many crops :meth:`predict` puts along a side of ``side`` px: ``side // crop`` (1 to 4),
        at least :attr:`min_positions` where the side is longer than a crop (no more than fit at distinct offsets)."""
        n = max(1, min(4, side // crop))
        return max(n, min(self.min_positions, side - crop + 1)) if side > crop else n

    def detect(self, rgb: np.ndarray, probs: Mapping[str, float] | None = None,
               restore: Restore | None = None) -> list[tuple[str, float]]:
        """The degradations blind mode runs on ``rgb``: :meth:`examine`'s ``found``."""
        return self.examine(rgb, probs, restore).found

    def examine(self, rgb: np.ndarray, probs: Mapping[str, float] | None = None,
                restore: Restore | None = None) -> Detection:
        """The degradations seen in ``rgb`` as ``(task, probability)``, in restoration order
        (:func:`~instruct_ipt.instruct.order_tasks`: the measured order). Multi-label: every task at or above its threshold, possibly none (a clean
        photo); with a primary, when any is: the primary's choice (with its softmax probability)
        and every other task at or above its extra threshold (with its score). Single-label: the
        most likely task. Single-label with :attr:`peeling` and ``restore`` (the restoration model,
        one task at a time): none when the most likely task is under its start threshold, or when
        removing it changes the central crop by less than its ``first_change`` threshold; else
        that task, then, after ``restore`` removed it from the central crop, the most likely other
        one on what is left, as long as it passes :class:`Peeling`'s further test (and, for JPEG,
        its block-grid test, :attr:`Peeling.blocks`; without
        ``restore``: the first task only, or none). With a clean class, "nothing to do" is the
        clean class winning instead (the most likely class; with peeling, at least ``peeling.clean``),
        and a further task must also be more likely than clean on what is left. ``probs``:
        :meth:`predict`'s, if already known; a classifier chooses among its keys only (a model's
        tasks, and :data:`CLEAN`: without that key, no clean gate; a multi-label one's primary too).

        With :attr:`Peeling.suggest`, the step after the last task named (while fewer than
        ``max_tasks`` are) may also be *suggested* (:attr:`Detection.suggested`: not run) when it
        passes the further test with its suggest threshold; that costs a restoration only where its
        task is one to suggest."""
        probs = self.predict(rgb) if probs is None else probs
        if not self.multilabel:
            clean = probs.get(CLEAN)
            tasks = {t: p for t, p in probs.items() if t != CLEAN}
            best = max(tasks, key=tasks.get)
            peel = self.peeling
            if clean is not None and clean >= (tasks[best] if peel is None or peel.clean is None else peel.clean):
                return Detection([])
            if peel is None:
                return Detection([(best, tasks[best])])
            if tasks[best] < peel.start.get(best, 0.0):
                return Detection([])
            found = {best: tasks[best]}
            if restore is None:
                return Detection(list(found.items()))
            steps = self.peel_steps(rgb, probs, restore)
            first = next(steps)
            if best in peel.first_change and first.change < peel.first_change[best]:
                return Detection([])  # removing it hardly changes the photo: nothing of it there
            suggested: list[tuple[str, float]] = []
            for step in steps if peel.max_tasks > 1 else ():  # lazy: no step is computed past the last one needed
                likely = step.clean is None or step.prob > step.clean
                if step.task == JPEG_TASK and not peel.blocks_seen(rgb):
                    break  # neither named nor suggested: no block grid in the image
                # (the restoration last, in each test: only when needed)
                if step.task in peel.further and likely and step.change >= peel.further[step.task]:
                    found[step.task] = step.prob
                    if len(found) < peel.max_tasks:
                        continue
                elif step.task in peel.suggest and likely and step.change >= peel.suggest[step.task]:
                    suggested.append((step.task, step.prob))
                break
            return Detection([(t, found[t]) for t in order_tasks(list(found))], suggested)
        found = {t: probs[t] for t in self.tasks if t in probs and probs[t] >= self.thresholds[t]}
        if found and self.primary is not None:  # something is there: the primary's choice, and extras
            main = self.primary.predict(rgb)
            best = max((t for t in main if t in probs), key=main.get)  # (among probs' tasks: a model's own)
            found = {best: main[best]} | {t: probs[t] for t in self.tasks
                                          if t != best and t in probs and probs[t] >= self.extra_thresholds[t]}
        return Detection([(t, found[t]) for t in order_tasks(list(found))])

    def peel_steps(self, rgb: np.ndarray, probs: Mapping[str, float], restore: Restore,
                   region: int | None = None) -> Iterator[PeelStep]:
        """The most likely task of ``probs`` (``rgb``'s), on the central ``region`` crop (default:
        :attr:`peeling`'s), then, for as long as it is iterated, the most likely *other* task (among
        ``probs``' keys, :data:`CLEAN` aside) on the crop restored by every step so far. Lazy: each
        further step costs one restoration (the previous step's :attr:`PeelStep.restored`) and one
        :meth:`predict`."""
        if self.multilabel:
            raise ValueError("peeling asks a single-label classifier")
        if region is None:
            region = self.peeling.region if self.peeling else PEEL_REGION
        if region < 1:
            raise ValueError(f"peeling region {region}: a side in pixels")
        tasks = [t for t in probs if t != CLEAN]
        task = max(tasks, key=probs.get)
        step = PeelStep(task, probs[task], center_crop(rgb, region), restore, probs.get(CLEAN))
        yield step
        done = [task]
        while len(done) < len(tasks):
            seen = self.predict(step.restored)
            task = max((t for t in tasks if t not in done), key=seen.get)
            step = PeelStep(task, seen[task], step.restored, restore, seen.get(CLEAN))
            yield step
            done.append(task)

    def save(self, path: str | Path) -> Path:
        meta = {"format": BLIND_FORMAT, "tasks": json.dumps(self.tasks), "width": str(self.width)}
        if self.peeling is not None:
            meta |= self.peeling.to_meta()
        if self.clean_class:
            meta |= {"clean_class": "1"}
        if self.align_blocks:
            meta |= {"align_blocks": "1"}
        if self.min_positions != 1:
            meta |= {"min_positions": str(self.min_positions)}
        if self.downsamplings != 3:
            meta |= {"downsamplings": str(self.downsamplings)}
        if self.multilabel:
            meta |= {"multilabel": "1", "thresholds": json.dumps(self.thresholds)}
        if self.primary is not None:
            meta |= {"primary_width": str(self.primary.width), "extra_thresholds": json.dumps(self.extra_thresholds)}
            if self.primary.downsamplings != 3:
                meta |= {"primary_downsamplings": str(self.primary.downsamplings)}
        return save_tagged(path, self.state_dict(), meta)

    @classmethod
    def load(cls, path: str | Path) -> DegradationClassifier:
        state, meta = load_tagged(path, BLIND_FORMAT, "an instruct-ipt degradation classifier")
        try:
            peeling = Peeling.from_meta(meta)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        tasks = json.loads(meta["tasks"])
        primary = (cls(tasks, width=int(meta["primary_width"]), downsamplings=int(meta.get("primary_downsamplings", "3")))
                   if "primary_width" in meta else None)
        extra = json.loads(meta["extra_thresholds"]) if primary is not None else None
        model = cls(tasks, width=int(meta["width"]), multilabel=meta.get("multilabel") == "1",
                    thresholds=json.loads(meta.get("thresholds", "{}")), primary=primary, extra_thresholds=extra,
                    peeling=peeling, clean_class=meta.get("clean_class") == "1",
                    align_blocks=meta.get("align_blocks") == "1", min_positions=int(meta.get("min_positions", "1")),
                    downsamplings=int(meta.get("downsamplings", "3")))
        model.load_state_dict(state)
        return model.eval()

    @classmethod
    def default(cls) -> DegradationClassifier:
        """The shipped model's classifier (in its folder, ``weights/default``)."""
        return cls.load(Path(str(resources.files("instruct_ipt") / "weights" / "default" / BLIND_FILE)))


class BlindDataset(Dataset):
    """Training samples for the classifier: degraded crops of photos at varied scale and sharpness.

    A random photo is rescaled (``scale``: users' photos come at any resolution), a ``context``
    square of it is degraded as a whole, and a random ``patch`` square of that is the sample.
    ``context > patch`` mimics crops of a whole degraded photo (haze thinning towards the near
    edge); the shipped classifier uses ``context == patch``, since a trial at 192 px (with blur
    samples softened too) scored worse on held-out photos: 88.9% against 95.1%. With probability
    ``soften`` the clean square is first blurred a little (Gaussian, sigma 0.4-1.2): many real
    photos are slightly soft, and softness alone must not read as motion blur (so tasks in
    ``keep_sharp``, whose label is the blur, are never softened).

    For a multi-label classifier, or one with a clean class, ``clean_share`` of the samples carry no
    degradation (the photo itself, softened or not: "nothing to do" must be learnt from examples)
    and ``composite_share`` carry two different ones applied in the physical order (:class:`~instruct_ipt.data.degradations.Composite`);
    the rest carry one. Each sample's ``labels`` mark every degradation it carries; ``task`` is the
    index of its only one (-1 when it has none or two).

    ``tone``: that share of the samples' squares is first given another exposure, tone curve, colour
    balance and saturation (:func:`vary_tone`), before any degradation and whatever the label -
    photos come bright, dark, flat or muted, and a clean photo that is merely bright and flat must
    not read as hazy.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        degradations: Mapping[str, Degradation],
        length: int,
        patch: int = 96,
        context: int = 96,
        scale: tuple[float, float] = (0.5, 1.0),
        soften: float = 0.3,
        keep_sharp: Sequence[str] = ("deblur",),
        seed: int = 0,
        clean_share: float = 0.0,
        composite_share: float = 0.0,
        tone: float = 0.0,
    ) -> None:
        if not images:
            raise ValueError("no clean images")
        if clean_share < 0 or composite_share < 0 or clean_share + composite_share > 1:
            raise ValueError(f"clean_share {clean_share} and composite_share {composite_share} must be >= 0 and add up to <= 1")
        if composite_share > 0 and len(degradations) < 2:
            raise ValueError("composite samples need two or more degradations")
        if patch > context:
            raise ValueError(f"patch {patch} is larger than the context {context}")
        if not 0.0 <= tone <= 1.0:
            raise ValueError(f"tone {tone}: a share of samples, in [0, 1]")
        self.images, self.degradations = list(images), dict(degradations)
        self.tasks = list(self.degradations)
        self.sampler = TaskSampler(self.tasks)
        self.length, self.patch, self.context = length, patch, context
        self.scale, self.soften, self.keep_sharp, self.seed = scale, soften, set(keep_sharp), seed
        self.clean_share, self.composite_share, self.tone = clean_share, composite_share, tone

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng((self.seed, index))
        present = [self.sampler(rng)]
        if self.clean_share or self.composite_share:  # (drawn only then: single-label samples stay as they were)
            kind = rng.random()  # clean, two degradations, or one
            if kind < self.clean_share:
                present = []
            elif kind < self.clean_share + self.composite_share:
                while present[-1] == present[0]:
                    present.append(self.sampler(rng))
                present = present[:1] + present[-1:]
        img = self.images[int(rng.integers(len(self.images)))]
        side = min(round(self.context / rng.uniform(*self.scale)), *img.shape[:2])
        square = random_crop(img, max(side, self.context), rng)
        if square.shape[0] != self.context:
            square = np.asarray(Image.fromarray(square).resize((self.context,) * 2, Image.Resampling.BICUBIC))
        clean = augment(square, rng).astype(np.float32) / 255.0
        if self.tone and rng.random() < self.tone:  # (drawn only then: samples without it stay as they were)
            clean = vary_tone(clean, rng)
        if rng.random() < self.soften and not any(self.tasks[i] in self.keep_sharp for i in present):
            sigma = rng.uniform(0.4, 1.2)
            clean = gaussian_filter(clean, (sigma, sigma, 0))
        ops = [self.degradations[self.tasks[i]] for i in present]
        if len(ops) > 1:
            degraded = Composite(tuple(ops))(clean, rng).image
        elif ops:
            degraded = ops[0](clean, rng).image
        else:
            degraded = clean
        top, left = rng.integers(0, self.context - self.patch + 1, size=2)
        crop = degraded[top : top + self.patch, left : left + self.patch]
        labels = torch.zeros(len(self.tasks))
        labels[present] = 1.0
        return {"input": to_tensor(crop), "task": present[0] if len(present) == 1 else -1, "labels": labels}


def vary_tone(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``rgb`` (float, [0, 1]) as another camera might have rendered it: an exposure gain
    (0.6-1.6x), a tone curve (gamma 0.7-1.4), a colour balance (each channel 0.9-1.1x) and a
    saturation (0.5-1.2x, around each pixel's luminance). None of them lifts black: black stays
    black, so no change here is a veil, the mark of haze (``A * (1 - t)`` added to every pixel)."""
    gain = np.exp(rng.uniform(np.log(0.6), np.log(1.6)))
    gamma = np.exp(rng.uniform(np.log(0.7), np.log(1.4)))
    balance = rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    saturation = rng.uniform(0.5, 1.2)
    out = np.clip(rgb * (gain * balance), 0.0, 1.0) ** gamma
    grey = out @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    out = grey[..., None] + saturation * (out - grey[..., None])
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def train_classifier(
    images: Sequence[np.ndarray],
    degradations: Mapping[str, Degradation],
    steps: int = 1500,
    batch_size: int = 32,
    patch_size: int = 96,
    context: int = 96,
    soften: float = 0.3,
    lr: float = 2e-3,
    seed: int = 0,
    workers: int = 0,
    log=None,
    init: DegradationClassifier | None = None,
    multilabel: bool = False,
    clean_share: float = 0.0,
    composite_share: float = 0.0,
    clean_class: bool = False,
    tone: float = 0.0,
    downsamplings: int | None = None,
    width: int | None = None,
) -> DegradationClassifier:
    """Train on synthetic degradations of clean photos (see :class:`BlindDataset`); ``init``
    continues from an existing classifier of the same tasks (a single-label one may start a
    multi-label one, or one with a clean class: its features and per-task scores carry over, a
    new clean class starts fresh, an init's clean class is left out of a classifier without one).
    ``multilabel``: a sigmoid per task with binary cross-entropy, on samples with none
    (``clean_share``), one or two (``composite_share``) degradations; thresholds stay at 0.5 until
    :func:`calibrate_thresholds`. ``clean_class``: a single-label classifier with
    a :data:`CLEAN` class, learnt from the ``clean_share`` of samples left clean. ``tone``: the share
    of photos rendered otherwise first (:func:`vary_tone`). ``downsamplings`` and ``width``: the
    classifier's stride-2 convolutions and its channels at full resolution (None: an ``init``'s own,
    else :class:`DegradationClassifier`'s defaults - the shipped design's, written down once there)."""
    tasks = list(degradations)
    if not multilabel and composite_share:
        raise ValueError("composite samples need a multi-label classifier (multilabel=True)")
    if not (multilabel or clean_class) and clean_share:
        raise ValueError("clean samples need a multi-label classifier or a clean class (clean_class=True)")
    if clean_class and not clean_share:
        raise ValueError("a clean class is learnt from clean samples: give a clean_share")
    if init is not None:
        width = init.width if width is None else width
        downsamplings = init.downsamplings if downsamplings is None else downsamplings
    shape = {k: v for k, v in (("width", width), ("downsamplings", downsamplings)) if v is not None}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DegradationClassifier(tasks, multilabel=multilabel, clean_class=clean_class, **shape)
    if patch_size < model.smallest_side:
        raise ValueError(f"{patch_size} px training squares are too small for {model.downsamplings} downsamplings "
                         f"(at least {model.smallest_side} px)")
    ds = BlindDataset(images, degradations, steps * batch_size, patch=patch_size, context=context, soften=soften,
                      seed=seed, clean_share=clean_share, composite_share=composite_share, tone=tone)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers)
    if init is not None:
        if init.tasks != tasks:
            raise ValueError(f"init classifier knows {init.tasks}, training for {tasks}")
        if init.downsamplings != model.downsamplings:
            raise ValueError(f"init classifier has {init.downsamplings} downsamplings, training {model.downsamplings}")
        if init.width != model.width:
            raise ValueError(f"init classifier has width {init.width}, training {model.width}")
        state = init.state_dict()
        for name in ("classifier.weight", "classifier.bias"):  # the task rows; a new clean class keeps its fresh row
            rows = state[name][: len(tasks)]  # (an init's clean row is dropped when training without one)
            state[name] = torch.cat([rows, model.state_dict()[name][len(tasks):]])
        model.load_state_dict(state)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for step, batch in enumerate(loader):
        logits = model(batch["input"])
        if multilabel:
            loss = F.binary_cross_entropy_with_logits(logits, batch["labels"])
        else:  # a clean sample (task -1) is the clean class, the last
            loss = F.cross_entropy(logits, batch["task"].where(batch["task"] >= 0, len(tasks)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log and (step + 1) % 50 == 0:
            log(f"step {step + 1}/{steps} loss {loss.item():.4f}")
    return model.eval()


def calibrate_thresholds(
    classifier: DegradationClassifier, cases: Sequence[tuple[np.ndarray, Sequence[str]]], rounds: int = 3,
    singles_first: bool = False,
) -> dict[str, float]:
    """Per-task thresholds on :meth:`DegradationClassifier.predict`'s probabilities that name the
    right *set* of degradations for as many held-out images as possible - what blind mode is judged
    by (a threshold tuned for each task alone lets a few false alarms per task add up to a wrong set
    on most images). ``cases``: (image, the tasks it carries), none for a clean one. Sets and
    returns ``classifier.thresholds``; see :func:`choose_thresholds`. ``singles_first``: images with
    exactly one degradation count before all others (lexicographically), so that naming the second
    degradation of a pair, or nothing on a clean photo, is never bought with a single-degradation
    photo - the case blind mode already handles well and must not get worse at."""
    if not classifier.multilabel:
        raise ValueError("thresholds belong to a multi-label classifier")
    scores, mains = [], []
    for rgb, _ in cases:  # (one pass: each image made once)
        p = classifier.predict(rgb)
        scores.append([p[t] for t in classifier.tasks])
        if classifier.primary is not None:
            q = classifier.primary.predict(rgb)
            mains.append(int(np.argmax([q[t] for t in classifier.tasks])))
    probs = np.array(scores)
    present = np.array([[t in tasks for t in classifier.tasks] for tasks in _case_tasks(cases)])
    first = present.sum(1) == 1 if singles_first else None
    main = np.array(mains) if classifier.primary is not None else None
    if main is None:
        classifier.thresholds = choose_thresholds(classifier.tasks, probs, present, rounds, first)
    else:
        classifier.thresholds, classifier.extra_thresholds = choose_hybrid_thresholds(
            classifier.tasks, probs, present, main, rounds, first)
    return classifier.thresholds


def detected_sets(probs: np.ndarray, thresholds: np.ndarray, main: np.ndarray | None = None,
                  extra: np.ndarray | None = None) -> np.ndarray:
    """What :meth:`DegradationClassifier.detect` names, as images x tasks booleans: every score at
    or over its threshold; with a primary classifier (``main``: its task index per image) instead,
    when any score is, the main task plus every other one at or over its ``extra`` threshold."""
    found = probs >= thresholds
    if main is None:
        return found
    one_hot = np.eye(probs.shape[1], dtype=bool)[main]
    return found.any(1, keepdims=True) & (one_hot | (probs >= extra))


def _ascend(vectors: list[tuple[np.ndarray, np.ndarray]], score: Callable[[], float], rounds: int,
            prefer: Sequence[float | None] | None = None,
            own: Sequence[Callable[[int], float] | None] | None = None) -> None:
    """Coordinate ascent in place: each entry ``j`` of each threshold vector in turn set to the
    midpoint between observed values ``values[:, j]`` (NaN: none for that image) of its pair that
    maximises ``score()``; an entry with no observed value is kept. Among equals, those that
    maximise the vector's ``own(j)`` (if given: how many of that threshold's own decisions are
    right - evidence the whole-set score ignores on images it gets wrong for another reason), then
    the one nearest the vector's ``prefer`` value (default 0.5: probabilities), or with None the
    middle one (a scale with no natural centre, such as a pixel change)."""
    prefer = [0.5] * len(vectors) if prefer is None else prefer
    own = [None] * len(vectors) if own is None else own
    for _ in range(rounds):
        for (th, observed), centre, tie in zip(vectors, prefer, own, strict=True):
            for j in range(len(th)):
                column = observed[:, j]
                values = np.unique(column[~np.isnan(column)])
                if not len(values):
                    continue
                candidates = np.concatenate([[values[0] / 2], (values[:-1] + values[1:]) / 2, [(values[-1] + 1) / 2]])
                results = np.empty(len(candidates))
                second = np.zeros(len(candidates))
                for k, c in enumerate(candidates):  # a few hundred images x candidates: cheap
                    th[j] = c
                    results[k] = score()
                    if tie is not None:
                        second[k] = tie(j)
                top = results == results.max()
                best = candidates[top & (second == second[top].max())]
                th[j] = best[len(best) // 2] if centre is None else best[np.argmin(np.abs(best - centre))]


def _check_calibration_set(tasks: Sequence[str], present: np.ndarray) -> None:
    for j, t in enumerate(tasks):
        if present[:, j].all() or not present[:, j].any():
            raise ValueError(f"calibrating {t} needs held-out images with and without it")


def _exact_score(present: np.ndarray, first: np.ndarray | None):
    """The calibration objective for :func:`_ascend`: images whose detected set is exactly right;
    with ``first`` (a boolean per image), those images count before any other - a lexicographic
    score, so no threshold trades one of them for any number of the rest."""
    weight = np.ones(len(present)) if first is None else np.where(first, len(present) + 1.0, 1.0)
    return lambda found: float(weight[(found == present).all(1)].sum())


def _choose(tasks: Sequence[str], probs: np.ndarray, present: np.ndarray, main: np.ndarray | None,
            rounds: int, first: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The presence thresholds and (with a primary's ``main``, else unused) the extra ones, by
    coordinate ascent on the exact-set score (:func:`_exact_score`)."""
    probs, present = np.asarray(probs, float), np.asarray(present, bool)
    _check_calibration_set(tasks, present)
    th, extra = np.full(len(tasks), 0.5), np.full(len(tasks), 0.5)
    score = _exact_score(present, first)
    _ascend([(th, probs)] if main is None else [(th, probs), (extra, probs)],
            lambda: score(detected_sets(probs, th, main, extra)), rounds)
    return th, extra


def choose_thresholds(tasks: Sequence[str], probs: np.ndarray, present: np.ndarray, rounds: int = 3,
                      first: np.ndarray | None = None) -> dict[str, float]:
    """Thresholds for ``probs`` (images x tasks) that maximise the number of images whose detected
    set equals ``present`` (images x tasks, bool): coordinate ascent from 0.5, each task's threshold
    in turn set to the midpoint between observed scores that scores best with the others fixed (among
    equals, the one nearest 0.5), ``rounds`` passes. ``first``: images to get right before any
    other (:func:`_exact_score`)."""
    th, _ = _choose(tasks, probs, present, None, rounds, first)
    return {t: float(v) for t, v in zip(tasks, th)}


def choose_hybrid_thresholds(tasks: Sequence[str], probs: np.ndarray, present: np.ndarray, main: np.ndarray,
                             rounds: int = 3, first: np.ndarray | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """The presence and the extra thresholds of a classifier with a primary (``main``: the primary's
    task index per image), chosen together as :func:`choose_thresholds` does."""
    th, extra = _choose(tasks, probs, present, main, rounds, first)
    return {t: float(v) for t, v in zip(tasks, th)}, {t: float(v) for t, v in zip(tasks, extra)}


def _check_tasks_known(tasks: Sequence[str], named: Sequence[str] | None, kind: str = "further") -> None:
    """``named`` (further tasks, or first-change ones: ``kind``) among ``tasks``: a task the
    classifier does not know can never be named."""
    unknown = sorted(set(named or ()) - set(tasks))
    if unknown:
        raise ValueError(f"{kind} tasks not among the classifier's: {', '.join(unknown)} (it knows {', '.join(tasks)})")


def _check_peeling_counts(counts: np.ndarray) -> None:
    """Images (``counts``: degradations per image) with one degradation and with none or two - else
    a threshold has nothing to separate."""
    if not (counts == 1).any() or not (counts != 1).any():
        raise ValueError("calibrating peeling needs held-out images with one degradation and with none or two")


def peeled_sets(first: np.ndarray, first_prob: np.ndarray, second: np.ndarray, second_change: np.ndarray,
                start: np.ndarray, further: np.ndarray, first_clean: np.ndarray | None = None,
                clean: float | None = None, second_beats: np.ndarray | None = None,
                first_change: np.ndarray | None = None, first_min: np.ndarray | None = None,
                barred: np.ndarray | None = None) -> np.ndarray:
    """What peeling names (two steps at most), as images x tasks booleans, from each image's first
    two :meth:`~DegradationClassifier.peel_steps` (task indices, the first's probability, the
    second's change): nothing when the first is under its ``start`` threshold, else the first, and
    the second when its change reaches its ``further`` threshold (per task; over 1: never). With a
    clean class (``first_clean``: the first step's clean probability; ``second_beats``: whether
    the second task was more likely than clean), also nothing when the clean probability reaches
    ``clean`` (None: the first task's probability), and the second only when it beats clean. With
    ``first_min`` (per task), also nothing when the first step's change (``first_change``) is under
    the first task's entry (0: always acts). ``barred`` (images x tasks, bool): a task never named
    second on that image (JPEG where the image shows no block grid: :attr:`Peeling.blocks`)."""
    n, k = len(first), len(start)
    go = first_prob >= start[first]
    if first_min is not None:
        if first_change is None:
            raise ValueError("a first-change threshold needs each image's first_change")
        go &= first_change >= first_min[first]
    if first_clean is not None:
        go &= first_clean < (first_prob if clean is None else clean)
    more = go & (second_change >= further[second])
    if second_beats is not None:
        more &= second_beats
    if barred is not None:
        more &= ~barred[np.arange(n), second]
    found = np.zeros((n, k), bool)
    found[np.arange(n), first] = go
    found[np.arange(n)[more], second[more]] = True
    return found


def choose_peeling_thresholds(tasks: Sequence[str], first: np.ndarray, first_prob: np.ndarray, second: np.ndarray,
                              second_change: np.ndarray, present: np.ndarray, further_tasks: Sequence[str] | None = None,
                              gate: bool = True, rounds: int = 3, first_images: np.ndarray | None = None,
                              first_clean: np.ndarray | None = None, second_beats: np.ndarray | None = None,
                              first_tasks: Sequence[str] = (), first_change: np.ndarray | None = None,
                              barred: np.ndarray | None = None) -> Peeling:
    """Peeling's thresholds (:class:`Peeling`: ``start`` per task of the first step, ``further`` per
    task of the second) that name exactly ``present`` (images x tasks, bool) for as many images as
    possible (:func:`peeled_sets`; coordinate ascent as :func:`choose_thresholds`, ``first_images``
    as its ``first``, but among equals the middle threshold: the widest margin both ways; for
    ``further``, before that, those that answer "is this task left?" right on the most images where
    peeling asks it - including images named wrongly whatever that threshold is, whose evidence the
    exact-set score cannot see: with few calibration photos a further threshold otherwise floats
    anywhere in a wide tie, wherever its candidates happen to cluster).
    ``further_tasks``: the only tasks that may be named after the first (default: all);
    ``gate=False``: no calibrated "nothing to do" (the first is always named; with a clean class,
    unless clean is the most likely class). A task never seen first keeps a ``start`` of 0.5; one
    never seen second is left out of ``further`` (never named after the first: nothing says what
    its threshold should be). With a clean class (``first_clean``, ``second_beats``: see
    :func:`peeled_sets`) the gate is ``clean``, one threshold on the clean probability (among
    equals, the one nearest 0.5), instead of ``start``. ``first_tasks``: tasks whose removal must
    also change the crop (``first_change``, per image) by a calibrated amount when they come first
    (:attr:`Peeling.first_change`; one never seen first is left out), among equals the lowest: just
    above the changes seen on images without that degradation. Denoising a clean photo leaves it at
    about 42 dB, while noise left in costs far more, and a handful of calibration photos says little
    about how far up the gap between the two the next photo's changes reach. ``barred``: tasks never
    named second on an image (see :func:`peeled_sets`), fixed before the thresholds are chosen."""
    first, second = np.asarray(first, int), np.asarray(second, int)
    first_prob, second_change = np.asarray(first_prob, float), np.asarray(second_change, float)
    present = np.asarray(present, bool)
    if (first_clean is None) != (second_beats is None):
        raise ValueError("a clean class gives both first_clean and second_beats")
    _check_tasks_known(tasks, further_tasks)
    _check_tasks_known(tasks, first_tasks, "first")
    if first_tasks and first_change is None:
        raise ValueError("first-change thresholds need each image's first_change")
    _check_peeling_counts(present.sum(1))
    allowed = list(tasks) if further_tasks is None else list(further_tasks)
    n, k = len(first), len(tasks)
    mask = np.array([t in allowed for t in tasks])
    at_first, at_second = np.full((n, k), np.nan), np.full((n, k), np.nan)
    at_first[np.arange(n), first] = first_prob
    at_second[np.arange(n), second] = np.where(mask[second], second_change, np.nan)
    seen_second = mask & ~np.isnan(at_second).all(0)
    clean_gate, start_gate = gate and first_clean is not None, gate and first_clean is None
    start, further = np.full(k, 0.5 if start_gate else 0.0), np.where(seen_second, 0.0, 2.0)
    clean = np.array([0.5])  # (one entry, changed in place by the ascent)
    vectors, prefer = [(further, at_second)], [None]
    first_min = None
    if first_tasks:
        gated = np.array([t in first_tasks for t in tasks])
        at_change = np.full((n, k), np.nan)
        at_change[np.arange(n), first] = np.where(gated[first], np.asarray(first_change, float), np.nan)
        seen_first = ~np.isnan(at_change).all(0)
        first_min = np.zeros(k)
        vectors.append((first_min, at_change))
        prefer.append(0.0)  # among equals the lowest: a task run on a clean photo costs less than a degradation left
    if clean_gate:
        vectors.append((clean, np.asarray(first_clean, float)[:, None]))
        prefer.append(0.5)
    if start_gate:
        vectors.append((start, at_first))
        prefer.append(None)
    score = _exact_score(present, first_images)

    def found() -> np.ndarray:
        return peeled_sets(first, first_prob, second, second_change, start, further, first_clean,
                           float(clean[0]) if clean_gate else None, second_beats, first_change, first_min, barred)

    def own_further(j: int) -> float:
        """Right answers of the test "is task j left?" wherever peeling asks it: the first step
        went ahead, j came second (and beat clean). Its label is whether the image carries j."""
        asked = found()[np.arange(n), first] & (second == j)
        if second_beats is not None:
            asked &= second_beats
        if barred is not None:
            asked &= ~barred[:, j]
        return float(((second_change[asked] >= further[j]) == present[asked, j]).sum())

    _ascend(vectors, lambda: score(found()), rounds, prefer=prefer,
            own=[own_further] + [None] * (len(vectors) - 1))
    return Peeling({t: float(v) for t, v in zip(tasks, start)} if start_gate else {},
                   {t: float(v) for t, v, seen in zip(tasks, further, seen_second) if seen},
                   clean=float(clean[0]) if clean_gate else None,
                   first_change={} if first_min is None else
                   {t: float(v) for t, v, seen in zip(tasks, first_min, seen_first) if seen})


def check_peeling_settings(classifier: DegradationClassifier, region: int = PEEL_REGION, max_tasks: int = 2,
                           further_tasks: Sequence[str] | None = None, first_tasks: Sequence[str] = (),
                           suggest_tasks: Sequence[str] = (), jpeg_blocks: bool = False) -> None:
    """Refuse what a peeling calibration of ``classifier`` cannot use - before its walk (minutes of
    restorations), not after: a multi-label classifier, fewer than two tasks, a bad region or
    ``max_tasks`` (:class:`Peeling`'s checks), a further, first-change or suggested task it does
    not know, a task both run after the first and suggested, a block-grid test without JPEG."""
    if classifier.multilabel:
        raise ValueError("peeling belongs to a single-label classifier")
    Peeling({}, {}, region, max_tasks)
    if region < classifier.smallest_side:
        raise ValueError(f"peeling region {region} px: this classifier judges images of at least {classifier.smallest_side} px a side")
    if len(classifier.tasks) < 2:
        raise ValueError("peeling needs a classifier of two or more tasks")
    _check_tasks_known(classifier.tasks, further_tasks)
    _check_tasks_known(classifier.tasks, first_tasks, "first")
    _check_suggest(classifier.tasks, further_tasks, suggest_tasks)
    _check_jpeg_blocks(classifier.tasks, jpeg_blocks)


def _check_jpeg_blocks(tasks: Sequence[str], jpeg_blocks: bool) -> None:
    """A block-grid test is for JPEG: refused for a classifier without that task."""
    if jpeg_blocks and JPEG_TASK not in tasks:
        raise ValueError(f"a block-grid test for JPEG: the classifier has no {JPEG_TASK!r} task")


def block_threshold(strengths: np.ndarray, has_jpeg: np.ndarray) -> float:
    """:attr:`Peeling.blocks`: the :func:`jpeg_block_strength` that best tells the held-out images
    with JPEG blocks (``has_jpeg``) from those without - the fewest images on the wrong side (a
    midpoint between observed strengths), among equals the middle one."""
    strengths, has_jpeg = np.asarray(strengths, float), np.asarray(has_jpeg, bool)
    if has_jpeg.all() or not has_jpeg.any():
        raise ValueError("a block-grid threshold needs held-out images with JPEG blocks and without")
    values = np.unique(strengths)
    candidates = np.concatenate([[values[0] - 1e-3], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-3]])
    wrong = np.array([(has_jpeg & (strengths < c)).sum() + (~has_jpeg & (strengths >= c)).sum() for c in candidates])
    best = candidates[wrong == wrong.min()]
    return float(best[len(best) // 2])


def _walk_barred(classifier: DegradationClassifier, walks: Mapping[str, np.ndarray], blocks: float | None) -> np.ndarray | None:
    """Images x tasks: JPEG on each walked image whose block grid is fainter than ``blocks`` (None: no test)."""
    if blocks is None:
        return None
    barred = np.zeros((len(walks["first"]), len(classifier.tasks)), bool)
    barred[:, list(classifier.tasks).index(JPEG_TASK)] = np.asarray(walks["blocks"], float) < blocks
    return barred


#: the arrays of :func:`peel_walks`, one entry per calibration image
WALK_KEYS = ("first", "first_prob", "first_change", "second", "second_change", "first_clean", "second_beats", "present",
             "blocks")


def peel_walks(classifier: DegradationClassifier, cases: Sequence[tuple[np.ndarray, Sequence[str]]],
               restore: Restore, region: int = PEEL_REGION,
               progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """Each case's first two :meth:`~DegradationClassifier.peel_steps` (two restorations of its
    crop: the slow part of :func:`calibrate_peeling`), as arrays keyed by :data:`WALK_KEYS`: task
    indices, the first's probability and change, the second's change, the first's clean probability (NaN
    without a clean class), whether the second beat clean, ``present`` (cases x tasks, the
    degradations each image carries) and ``blocks``, the :func:`jpeg_block_strength` of its central crop. They do not depend on the thresholds chosen from them, so
    :func:`choose_peeling` can try several choices (``further_tasks``, ``gate``, ``first_tasks``) on one walk.
    ``progress(done, total)`` is called after each case (minutes in all: worth showing)."""
    if classifier.multilabel:
        raise ValueError("peeling belongs to a single-label classifier")
    index = {t: i for i, t in enumerate(classifier.tasks)}
    carried = _case_tasks(cases)
    unknown = sorted({t for tasks in carried for t in tasks} - set(index))
    if unknown:
        raise ValueError(f"calibration images carry {', '.join(unknown)}: not among the classifier's tasks")
    walks = []
    for rgb, _ in cases:
        steps = classifier.peel_steps(rgb, classifier.predict(rgb), restore, region)
        one, two = next(steps), next(steps)
        clean = (one.clean, two.prob > two.clean) if classifier.clean_class else (np.nan, True)
        walks.append((index[one.task], one.prob, one.change, index[two.task], two.change, *clean,
                      jpeg_block_strength(one.before)))
        if progress is not None:
            progress(len(walks), len(cases))
    first, first_prob, first_change, second, second_change, first_clean, second_beats, blocks = (
        np.array(v) for v in zip(*walks))
    present = np.array([[t in tasks for t in classifier.tasks] for tasks in carried], bool)
    return {"first": first.astype(np.int64), "first_prob": first_prob.astype(float),
            "first_change": first_change.astype(float), "second": second.astype(np.int64),
            "second_change": second_change.astype(float), "first_clean": first_clean.astype(float),
            "second_beats": second_beats.astype(bool), "present": present, "blocks": blocks.astype(float)}


def save_walks(path: str | Path, walks: Mapping[str, np.ndarray], key: str) -> Path:
    """Recorded walks (:func:`peel_walks`' arrays, and any others given) as plain arrays (.npz, no
    pickled objects), written atomically, with ``key``: what they were recorded for (the
    classifier's and model's weights, the images ...), so that they are never read for anything else."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, key=np.array(key), **walks)

    return atomic_write(path, write)


def load_walks(path: str | Path, key: str, extra: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The walks :func:`save_walks` wrote for ``key`` (:data:`WALK_KEYS` and the ``extra`` arrays);
    anything else - another key, a file of an older version or of another kind - is refused."""
    damaged = NPZ_READ_ERRORS
    again = "remove it (or give another file) to walk again"
    try:
        f = np.load(path, allow_pickle=False)
    except damaged as e:
        raise ValueError(f"{path}: not a walks file ({str(e) or type(e).__name__}): {again}") from None
    if not hasattr(f, "files"):  # a plain .npy array, not an .npz archive
        raise ValueError(f"{path}: not a walks file")
    with f:
        if "key" not in f.files:
            raise ValueError(f"{path}: not a walks file")
        missing = [k for k in (*WALK_KEYS, *extra) if k not in f.files]
        if missing:
            raise ValueError(f"{path}: walks written by an older version (no {', '.join(missing)}): {again}")
        try:  # (an archive's members are read here: damage inside it shows now, not at np.load)
            same = str(f["key"]) == key
            walks = {k: f[k] for k in (*WALK_KEYS, *extra)} if same else {}
        except damaged as e:
            raise ValueError(f"{path}: a damaged walks file ({str(e) or type(e).__name__}): {again}") from None
    if not same:
        raise ValueError(f"{path} holds walks for another classifier, model, photos, seeds or region: {again}")
    return walks


def choose_peeling(classifier: DegradationClassifier, walks: Mapping[str, np.ndarray], region: int = PEEL_REGION,
                   max_tasks: int = 2, further_tasks: Sequence[str] | None = None, gate: bool = True,
                   rounds: int = 3, singles_first: bool = True, first_tasks: Sequence[str] = (),
                   suggest_tasks: Sequence[str] = (), model: str | None = None, jpeg_blocks: bool = False) -> Peeling:
    """``classifier``'s :class:`Peeling` from recorded :func:`peel_walks` (see
    :func:`calibrate_peeling`, which walks and then calls this). Sets and returns
    ``classifier.peeling``; ``model`` (:attr:`Peeling.model`): the restoration model the walks were
    taken with, recorded in it. ``suggest_tasks`` (not in ``further_tasks``, which must then be given):
    tasks to mention, not run, after the first (:attr:`Peeling.suggest`); each one's threshold is
    the further threshold the same calibration chooses when it may *name* them too - what it would
    take to run them - while every other threshold is the one chosen without them. ``jpeg_blocks``:
    JPEG is named after the first task only where the image shows a block grid (:attr:`Peeling.blocks`, chosen first by
    :func:`block_threshold` on the walked images' ``blocks``; the other thresholds then see JPEG barred
    where it is fainter)."""
    missing = [k for k in WALK_KEYS if k not in walks]
    if missing:
        raise ValueError(f"peeling walks lack {', '.join(missing)}")
    present = np.asarray(walks["present"], bool)
    if present.ndim != 2 or present.shape[1] != len(classifier.tasks):
        raise ValueError(f"peeling walks for {present.shape[-1]} tasks; the classifier has {len(classifier.tasks)}")
    _check_suggest(classifier.tasks, further_tasks, suggest_tasks)
    _check_jpeg_blocks(classifier.tasks, jpeg_blocks)
    blocks = (block_threshold(walks["blocks"], present[:, list(classifier.tasks).index(JPEG_TASK)])
              if jpeg_blocks else None)
    barred = _walk_barred(classifier, walks, blocks)
    by_clean = ({"first_clean": walks["first_clean"], "second_beats": walks["second_beats"]}
                if classifier.clean_class else {})
    first_images = present.sum(1) <= 1 if classifier.clean_class else present.sum(1) == 1

    def choose(further: Sequence[str] | None) -> Peeling:
        return choose_peeling_thresholds(classifier.tasks, walks["first"], walks["first_prob"], walks["second"],
                                         walks["second_change"], present, further, gate, rounds,
                                         first_images if singles_first else None, **by_clean,
                                         first_tasks=first_tasks, first_change=walks["first_change"], barred=barred)

    peeling = choose(further_tasks)
    if suggest_tasks:  # what naming them would take; a task never seen second gets no threshold (never suggested)
        naming = choose([*(further_tasks or ()), *suggest_tasks]).further
        peeling = replace(peeling, suggest={t: naming[t] for t in suggest_tasks if t in naming})
    asked = {"further_tasks": None if further_tasks is None else list(further_tasks), "first_tasks": list(first_tasks),
             "suggest_tasks": list(suggest_tasks), "gate": bool(gate)} | ({"jpeg_blocks": True} if jpeg_blocks else {})
    classifier.peeling = replace(peeling, region=region, max_tasks=max_tasks, model=model, asked=asked, blocks=blocks)
    return classifier.peeling


def _check_suggest(tasks: Sequence[str], further_tasks: Sequence[str] | None, suggest_tasks: Sequence[str]) -> None:
    """Tasks to suggest must be known, and not among those run after the first (which must be named)."""
    if not suggest_tasks:
        return
    _check_tasks_known(tasks, suggest_tasks, "suggest")
    if further_tasks is None:
        raise ValueError("suggested tasks need the further tasks named: by default every task is run after the first")
    _check_apart(further_tasks, suggest_tasks)


def _check_apart(further: Iterable[str], suggest: Iterable[str]) -> None:
    """A task is either run after the first (further) or only suggested, not both."""
    both = sorted(set(further) & set(suggest))
    if both:
        raise ValueError(f"{', '.join(both)}: both run after the first (further) and only suggested - one or the other")


def walked_suggestions(classifier: DegradationClassifier, walks: Mapping[str, np.ndarray]) -> np.ndarray:
    """What ``classifier`` would *suggest* (:attr:`Peeling.suggest`) on each image of recorded
    :func:`peel_walks` (images x tasks, bool; see :func:`walked_sets`): the second step's task, when
    the first was named and it passes the further test with its suggest threshold."""
    named = walked_sets(classifier, walks)
    tasks, peel = classifier.tasks, classifier.peeling
    n, second = len(named), np.asarray(walks["second"], int)
    limit = np.array([peel.suggest.get(t, 2.0) if peel.max_tasks > 1 else 2.0 for t in tasks])  # 2: never
    likely = np.asarray(walks["second_beats"], bool) if classifier.clean_class else np.ones(n, bool)
    hit = (named.any(1) & ~named[np.arange(n), second]  # (a task named second is not one to suggest: kept apart)
           & likely & (np.asarray(walks["second_change"]) >= limit[second]))
    barred = _walk_barred(classifier, walks, peel.blocks)
    if barred is not None:
        hit &= ~barred[np.arange(n), second]
    out = np.zeros_like(named)
    out[np.arange(n)[hit], second[hit]] = True
    return out


def walked_sets(classifier: DegradationClassifier, walks: Mapping[str, np.ndarray]) -> np.ndarray:
    """What ``classifier`` with its :attr:`~DegradationClassifier.peeling` names on each image of
    recorded :func:`peel_walks` (images x tasks, bool): what :meth:`~DegradationClassifier.detect`
    would, two tasks at most, without restoring again - so a calibration can report how many
    images it gets right."""
    peel = classifier.peeling
    if peel is None:
        raise ValueError("the classifier has no peeling")
    tasks = classifier.tasks
    start = np.array([peel.start.get(t, 0.0) for t in tasks])
    further = np.array([peel.further.get(t, 2.0) if peel.max_tasks > 1 else 2.0 for t in tasks])  # 2: never
    by_clean = ({"first_clean": walks["first_clean"], "clean": peel.clean, "second_beats": walks["second_beats"]}
                if classifier.clean_class else {})
    by_change = ({"first_change": walks["first_change"], "first_min": np.array([peel.first_change.get(t, 0.0) for t in tasks])}
                 if peel.first_change else {})
    return peeled_sets(walks["first"], walks["first_prob"], walks["second"], walks["second_change"], start, further,
                       **by_clean, **by_change, barred=_walk_barred(classifier, walks, peel.blocks))


def suggestion_outcomes(suggested: np.ndarray, named: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image (images x tasks, bool, in: :func:`walked_suggestions`, :func:`walked_sets`, the
    degradations there), whether blind mode's suggestion was *right* - a degradation there and not
    run - and whether it was *wrong*: a suggestion, and not a right one."""
    right = (suggested & present & ~named).any(1)
    return right, suggested.any(1) & ~right


class CalibrationCases(Sequence[tuple[np.ndarray, tuple[str, ...]]]):
    """What thresholds are calibrated on (:func:`calibration_cases`): each clean photo as it is, with
    each task's degradation and with each pair of them (applied in the physical order), ``seeds``
    times, each image seeded by (seed, photo, case) - the same images on every run.

    Why a sequence that degrades an image when it is read, not a list: a calibration reads each
    image once, and 44 images a photo held at once (six tasks, two seeds) take gigabytes for a few
    1024 px photos and far more for a camera's. :attr:`present` says what each image carries
    without making it."""

    def __init__(self, photos: Sequence[np.ndarray], tasks: Sequence[str], seeds: int) -> None:
        self.photos = list(photos)
        sets = [(), *((t,) for t in tasks), *itertools.combinations(tasks, 2)]
        #: (photo index, seed, case index, the tasks it carries), in reading order
        self._keys = [(i, seed, k, present) for i in range(len(self.photos)) for seed in range(seeds)
                      for k, present in enumerate(sets)]

    @property
    def present(self) -> list[tuple[str, ...]]:
        """The degradations each image carries, in order (no image is made)."""
        return [key[3] for key in self._keys]

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, index: int | slice):  # type: ignore[override]
        if isinstance(index, slice):  # (a list: each image of the slice made now)
            return [self[j] for j in range(*index.indices(len(self)))]
        i, seed, k, present = self._keys[index]
        rng = np.random.default_rng((seed, i, k))
        clean = self.photos[i]
        return (make_degradation("+".join(present))(clean, rng).image if present else clean), present  # "a" or "a+b"


def calibration_cases(photos: Sequence[np.ndarray], tasks: Sequence[str], seeds: int) -> CalibrationCases:
    """The calibration images of ``photos`` (clean, float (H, W, 3)) for ``tasks``, as (image, the
    tasks it carries): see :class:`CalibrationCases`."""
    return CalibrationCases(photos, tasks, seeds)


def _case_tasks(cases: Sequence[tuple[np.ndarray, Sequence[str]]]) -> list[Sequence[str]]:
    """The tasks each case carries, without making a :class:`CalibrationCases` image."""
    return cases.present if isinstance(cases, CalibrationCases) else [tasks for _, tasks in cases]


def calibrate_peeling(classifier: DegradationClassifier, cases: Sequence[tuple[np.ndarray, Sequence[str]]],
                      restore: Restore, region: int = PEEL_REGION, max_tasks: int = 2, further_tasks: Sequence[str] | None = None,
                      gate: bool = True, rounds: int = 3, singles_first: bool = True, first_tasks: Sequence[str] = (),
                      suggest_tasks: Sequence[str] = (), model: str | None = None, jpeg_blocks: bool = False,
                      progress: Callable[[int, int], None] | None = None) -> Peeling:
    """Give a single-label ``classifier`` its :class:`Peeling`, calibrated on held-out ``cases``
    ((image, the tasks it carries): clean, one and two degradations) with the restoration model's
    ``restore``: each image's first two peeling steps are taken once (:func:`peel_walks`: two
    restorations of its crop), then :func:`choose_peeling_thresholds` picks the thresholds
    (``further_tasks``, ``gate``, ``first_tasks``: see there; ``suggest_tasks``, ``jpeg_blocks``: see
    :func:`choose_peeling`). ``singles_first``: images with one degradation count
    before all others (see :func:`calibrate_thresholds`) - blind mode must not get worse where it
    is already good; with a clean class, clean images too: "nothing to do" is then an answer the
    classifier was trained to give, asked for as plainly as one task (counting singles alone
    first, one single too faint to see - noise of sigma 1.6 - held the clean threshold above three
    of the five clean calibration photos). ``model``: the restoration model behind ``restore``
    (:attr:`Peeling.model`: its :func:`~instruct_ipt.io.weights_digest`), recorded; ``progress``:
    see :func:`peel_walks`. Sets and returns ``classifier.peeling``."""
    check_peeling_settings(classifier, region, max_tasks, further_tasks, first_tasks, suggest_tasks, jpeg_blocks)
    _check_peeling_counts(np.array([len(tasks) for tasks in _case_tasks(cases)]))
    walks = peel_walks(classifier, cases, restore, region, progress)
    return choose_peeling(classifier, walks, region, max_tasks, further_tasks, gate, rounds, singles_first, first_tasks,
                          suggest_tasks, model, jpeg_blocks)
