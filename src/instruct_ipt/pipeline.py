"""``RestorationPipeline``: the application around a model, shared by the CLI, the Python API and
the demo.

The model (:class:`~instruct_ipt.model.InstructIPT`) is an ``nn.Module`` that restores tensors for
named tasks. Everything between a user's request and those tensors lives here: which tasks to run
(named, understood from an instruction, or seen in the image), running them one after another,
tiling, and giving the result back in the form it came in (bit depth, grey, alpha). One object does
it for everyone, so ``instruct-ipt restore`` and ``pipe(...)`` give the same pixels.

A pipeline folder is a model folder (``config.json`` + ``model.safetensors``, with the per-task
grid spans in the config) plus the instruction head and the degradation classifier the pipeline
uses, so a model trained with new tasks travels as one folder.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .data.images import LoadedImage, first_frame_only, from_array, from_pil, load_image, save_image, to_array, to_pil
from .export import ENGINES, OnnxRestorer, onnx_available, onnx_providers
from .inference import DEFAULT_OVERLAP, pick_device, restore_array
from .instruct import InstructionHead, Interpreter, order_tasks
from .instruct.blind import (
    BLIND_FILE,
    CLEAN,
    DegradationClassifier,
    UncalibratedPeelingWarning,
    calibrate_peeling,
    calibration_cases,
)
from .instruct.head import HEAD_FILE
from .io import weights_digest
from .model import InstructIPT, resolve_model_dir


@dataclass
class TaskChoice:
    """Which tasks run, in order, how sure the chooser was, and who chose them."""

    tasks: list[str]
    confidences: list[float]
    #: "task" (named by the caller), "instruction" (understood from text) or "blind" (seen in the image)
    source: str
    #: blind mode only: degradations that may be there too but were not run (``Peeling.suggest``), for the user to name
    suggested: list[str] = field(default_factory=list)
    #: blind mode only: the classifier's probability of each class it chose among (the model's tasks, and clean)
    probabilities: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def nothing_to_do(self) -> bool:
        """Blind mode saw no degradation: the image is given back unchanged."""
        return not self.tasks

    def describe(self) -> str:
        how = {"task": "as asked", "instruction": "from the instruction", "blind": "seen in the image (blind mode)"}
        if self.nothing_to_do:
            return f"nothing to do, pixels unchanged [{how[self.source]}]"
        parts = ", then ".join(f"{t} ({c:.0%})" if self.source != "task" else t for t, c in zip(self.tasks, self.confidences))
        also = (f"; possibly also {' and '.join(self.suggested)} (not run; to run {'it' if len(self.suggested) == 1 else 'them'} "
                f"too, name the tasks: {','.join(self.with_suggested)})" if self.suggested else "")
        return f"{parts} [{how[self.source]}]{also}"

    @property
    def with_suggested(self) -> list[str]:
        """The tasks and the suggested ones, in the order they would run together (the measured order)."""
        return order_tasks([*self.tasks, *self.suggested])


@dataclass
class Restored:
    """A restored image file: its pixels in the source's layout (bit depth, grey, alpha) and the
    tasks that made it. :meth:`save` writes exactly what ``instruct-ipt restore`` writes."""

    image: LoadedImage
    choice: TaskChoice

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically; the format comes from the suffix (a 16-bit source stays 16-bit in ``.png``
        and ``.tif``, and is 10-bit in ``.heic``; ``.jpg`` and ``.webp`` are 8-bit; those three at
        quality 95)."""
        img = self.image
        return save_image(path, img.rgb, img.alpha, img.grey, bit_depth=img.bit_depth, icc=img.icc, exif=img.exif)

    def to_pil(self) -> Image.Image:
        return to_pil(self.image, self.image.rgb)

    def to_array(self) -> np.ndarray:
        """uint8 or uint16 (by the source's bit depth): (H, W) grey, (H, W, 2) grey + alpha,
        (H, W, 3) RGB or (H, W, 4) RGBA."""
        img = self.image
        channels = (1 if img.grey else 3) + (img.alpha is not None)
        like = np.zeros((1, 1) if channels == 1 else (1, 1, channels), np.uint16 if img.bit_depth == 16 else np.uint8)
        return to_array(img, img.rgb, like)


class RestorationPipeline:
    """Model + instruction interpreter + blind classifier + tiling: restore what a user has.

    >>> pipe = RestorationPipeline.from_pretrained()          # the shipped model
    >>> out = pipe("photo.jpg", instruction="remove the rain")  # a Restored; out.save("clean.png")
    >>> arr = pipe(np.asarray(Image.open("photo.jpg")), task="derain")  # same kind back: uint8 array

    ``engine`` (one of :data:`ENGINES`) chooses what runs the network; the default ``"torch"`` is the
    CLI's default too, so ``instruct-ipt restore`` and ``pipe(...)`` write the same bytes.
    """

    def __init__(
        self,
        model: InstructIPT,
        head: InstructionHead | None = None,
        classifier: DegradationClassifier | None = None,
        engine: str = "torch",
    ) -> None:
        """``head`` / ``classifier``: None takes the shipped model's (used only when needed)."""
        self.model = model.eval()
        self._head = head
        self._classifier = classifier
        self._interpreter: Interpreter | None = None
        self.engine = engine
        #: called with a task's name just before its ONNX graph is exported (not found in the cache)
        self.on_export: Callable[[str], None] | None = None
        self._onnx: OnnxRestorer | None = None  # made on first use, kept: its sessions are the cache in memory
        self._onnx_device: torch.device | None = None
        # the model blind mode's peeling restores with, and its weights' digest, taken now: before a
        # caller may cast it to half precision (still the model the thresholds were calibrated with)
        self._digested = (self.model, weights_digest(self.model))

    # loading and saving --------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike | None = None, device: str | None = "auto",
                        engine: str = "torch") -> RestorationPipeline:
        """Load a pipeline folder; None or ``"default"``: the model shipped with the package.

        A model folder without its own instruction head or classifier (saved by
        ``InstructIPT.save_pretrained``) gets the shipped ones. ``engine``: see :data:`ENGINES`.
        """
        check_engine(engine)  # before the weights are read
        folder = resolve_model_dir(folder)
        model = InstructIPT.from_pretrained(folder, device=pick_device(device))
        head = InstructionHead.load(folder / HEAD_FILE) if (folder / HEAD_FILE).is_file() else None
        clf = DegradationClassifier.load(folder / BLIND_FILE) if (folder / BLIND_FILE).is_file() else None
        return cls(model, head, clf, engine)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write everything the pipeline uses into ``folder`` (each file atomically): the model's
        config (with its per-task grid spans) and weights, the instruction head, the classifier."""
        folder = Path(folder)
        self.model.save_pretrained(folder)
        self.head.save(folder / HEAD_FILE)
        self.classifier.save(folder / BLIND_FILE)
        return folder

    @property
    def head(self) -> InstructionHead:
        if self._head is None:
            self._head = InstructionHead.default()
        return self._head

    @property
    def classifier(self) -> DegradationClassifier:
        """Blind mode's classifier, on the model's device (moved there when first asked for after
        the model moved): on a GPU, calibrating blind mode judged each of its images on the CPU."""
        if self._classifier is None:
            self._classifier = DegradationClassifier.default()
        device = next(self.model.parameters()).device
        if next(self._classifier.parameters()).device != device:
            self._classifier.to(device)
        return self._classifier

    @property
    def interpreter(self) -> Interpreter:
        """Reads instructions; the head must know exactly the model's tasks (a clear error if not)."""
        if self._interpreter is None:
            self.head.check_tasks(self.model.tasks)
            self._interpreter = Interpreter(self.head)
        return self._interpreter

    @property
    def tasks(self) -> list[str]:
        return self.model.tasks

    # engines ---------------------------------------------------------------------------
    @property
    def engine(self) -> str:
        """The engine asked for, one of :data:`ENGINES`; :attr:`active_engine` says what it resolves to."""
        return self._engine

    @engine.setter
    def engine(self, engine: str) -> None:
        self._engine = check_engine(engine)

    @property
    def active_engine(self) -> str:
        """``"onnxruntime"`` or ``"pytorch"``: what :meth:`run` uses now. ``"auto"`` is resolved at each
        call, so ``pipe.to("cuda")`` goes back to PyTorch (onnxruntime's gain was measured on CPUs
        only), and so does a float16 or bfloat16 model (the graphs are float32: other pixels)."""
        if self.engine != "auto":
            return "pytorch" if self.engine == "torch" else "onnxruntime"
        p = next(self.model.parameters())
        if p.device.type != "cpu" or p.dtype != torch.float32 or self.model.adaptation is not None:
            return "pytorch"  # (a feature adaptation does not export: its adapters run beside the backbone)
        return "onnxruntime" if onnx_available() else "pytorch"

    def _onnx_restorer(self) -> OnnxRestorer:
        """The onnxruntime runner, made once and reused (its sessions stay loaded); made again only
        when the model or its device changed. Raises ``ImportError`` without onnx/onnxruntime and
        ``ValueError`` for a CUDA model when onnxruntime has no CUDA provider."""
        device = next(self.model.parameters()).device
        if self._onnx is None or self._onnx.model is not self.model or self._onnx_device != device:
            self._onnx = OnnxRestorer(self.model, onnx_providers(device))
            self._onnx_device = device
        self._onnx.on_export = self.on_export
        return self._onnx

    # choosing and running tasks --------------------------------------------------------
    def choose(self, rgb: np.ndarray | None = None, task: str | Sequence[str] | None = None,
               instruction: str | None = None) -> TaskChoice:
        """A named task wins; else an instruction is interpreted; else blind mode looks at ``rgb``.

        ``task``: one task name, or a sequence run in the order given, as a list or as one string
        with commas (``"derain,denoise"``)."""
        if task is not None and instruction is not None:
            raise ValueError("give a task or an instruction, not both")
        if task is not None:
            tasks = named_tasks(task)
            for t in tasks:
                self.model.task_index(t)  # unknown task: a clear error listing the model's tasks
            return TaskChoice(tasks, [1.0] * len(tasks), "task")
        if instruction is not None:
            result = self.interpreter(instruction)
            return TaskChoice(result.tasks, result.confidences, "instruction")
        if rgb is None:
            raise ValueError("blind mode needs the image")
        clf = self.classifier
        if not set(clf.tasks) & set(self.model.tasks):
            raise ValueError(f"blind mode knows none of this model's tasks ({', '.join(self.model.tasks)}); name a task")
        # the model's tasks only (and clean, if the classifier has that class): the most likely of them for a
        # single-label classifier, a multi-label one's primary choosing among them too
        probs = {t: p for t, p in clf.predict(rgb).items() if t in self.model.tasks or t == CLEAN}
        self._check_calibration(clf)
        seen = clf.examine(rgb, probs, restore=self._restore_one)
        found = [(t, p) for t, p in seen.found if t in self.model.tasks]
        also = [t for t, _ in seen.suggested if t in self.model.tasks]
        return TaskChoice([t for t, _ in found], [round(p, 4) for _, p in found], "blind", also,
                          {t: round(p, 4) for t, p in probs.items()})

    def _check_calibration(self, clf: DegradationClassifier) -> None:
        """Warn (:class:`~instruct_ipt.instruct.blind.UncalibratedPeelingWarning`, once per process)
        when ``clf``'s peeling thresholds were calibrated with another restoration model than
        :attr:`model`: they measure that model's restorations (a model folder without its own
        classifier gets the shipped one, calibrated for the shipped model)."""
        calibrated = clf.peeling.model if clf.peeling is not None else None
        if calibrated is not None and calibrated != self._model_digest():
            warnings.warn("blind mode's peeling thresholds were calibrated with another restoration model: what it "
                          "names after the first task, or its 'nothing to do', may be off for this one. Calibrate "
                          "them for it: instruct-ipt calibrate-blind --model DIR --photos CLEAN_PHOTOS (docs/"
                          "instructions.md, 'Blind mode for a restoration model of your own')",
                          UncalibratedPeelingWarning, stacklevel=4)

    def _model_digest(self) -> str:
        """:attr:`model`'s :func:`~instruct_ipt.io.weights_digest`, as taken when the pipeline got it
        (again when the model was replaced since)."""
        if self._digested[0] is not self.model:
            self._digested = (self.model, weights_digest(self.model))
        return self._digested[1]

    def calibrate_blind_mode(self, photos: Sequence[np.ndarray], seeds: int = 2,
                             progress: Callable[[int, int], None] | None = None,
                             names: Sequence[str] | None = None) -> DegradationClassifier:
        """Blind mode calibrated for this pipeline's model: a copy of :attr:`classifier` whose peeling
        thresholds are chosen again, asking what its own peeling asked (``Peeling.choices``), from
        this model's restorations of ``photos`` (clean, float (H, W, 3) in [0, 1]: photos the
        classifier did not train on), each as it is, with each degradation and with each pair,
        ``seeds`` times (``calibration_cases``). The copy records this model (``Peeling.model``),
        becomes the pipeline's classifier and is what :meth:`save_pretrained` writes. Two
        restorations of a 384 px crop per image: about 2 minutes a photo on 2 CPU cores with the
        shipped classifier's six tasks; ``progress(done, total)`` after each image. Why: the
        thresholds measure one model's restorations (docs/instructions.md, "Blind mode for a
        restoration model of your own")."""
        clf = self.classifier
        if clf.peeling is None:
            raise ValueError("this blind classifier does not peel: none of its thresholds depends on the restoration model")
        missing = sorted(set(clf.tasks) - set(self.model.tasks))
        if missing:
            raise ValueError(f"the model lacks {', '.join(missing)}: calibrating restores with every task the classifier knows")
        if not photos:
            raise ValueError("calibrating blind mode needs clean photos")
        names = list(names) if names is not None else [str(i) for i in range(len(photos))]  # (in errors: a file's name)
        tiny = [f"{n} ({p.shape[1]}x{p.shape[0]})" for n, p in zip(names, photos) if min(p.shape[:2]) < clf.smallest_side]
        if tiny:  # now, not an image of one of them minutes into the walk
            raise ValueError(f"photos too small for blind mode to judge (at least {clf.smallest_side} px a side): "
                             f"{', '.join(tiny)}")
        new = copy.deepcopy(clf)
        calibrate_peeling(new, calibration_cases(photos, new.tasks, seeds), self._restore_one, **clf.peeling.choices(),
                          model=self._model_digest(), progress=progress)
        self._classifier = new
        return new

    def _restore_one(self, rgb: np.ndarray, task: str) -> np.ndarray:
        """One task on the crop blind mode's peeling looks at (:class:`~instruct_ipt.instruct.blind.Peeling`; 384 px
        by default, small enough to run in one piece), with the pipeline's engine."""
        return self.run(rgb, [task])

    def run(self, rgb: np.ndarray, tasks: list[str], tile: int | None = None, overlap: int = DEFAULT_OVERLAP,
            progress: Callable[[int, int], None] | None = None, batch: int = 1) -> np.ndarray:
        """Apply ``tasks`` to a float32 (H, W, 3) image one after the other, each output clamped to
        [0, 1] before the next. Each task runs merged (the backbone's cost); the model is left as
        it was. ``tile``, ``overlap``, ``batch``: see :func:`~instruct_ipt.inference.restore_array`."""
        check_tiling(tile, overlap, batch)
        onnx = self._onnx_restorer() if tasks and self.active_engine == "onnxruntime" else None
        out = rgb
        for t in tasks:
            if onnx is not None:
                out = onnx(out, t, tile, overlap, progress, batch)
            else:
                with self.model.merged(t):
                    out = restore_array(self.model, out, None if self.model.modulated else t, tile, overlap, progress, batch)
            out = np.clip(out, 0.0, 1.0)
        return out

    def use_onnx(self) -> RestorationPipeline:
        """Run tasks through onnxruntime from now on, whatever the device (``engine="onnx"``,
        ``instruct-ipt restore --engine onnx``): each task's graph is exported when first used, or
        read from the disk cache (see :class:`~instruct_ipt.export.OnnxRestorer`); the pixels match
        PyTorch's up to float rounding. Needs onnx and onnxruntime (the ``export`` extra): said
        here, before any image, as is a CUDA model with an onnxruntime that has no CUDA provider."""
        self._onnx_restorer()
        self.engine = "onnx"
        return self

    def restore(self, image: LoadedImage, task: str | Sequence[str] | None = None, instruction: str | None = None,
                choice: TaskChoice | None = None, **run: Any) -> Restored:
        """Restore a loaded image; ``choice`` skips choosing (e.g. one instruction for a folder).
        ``run``: ``tile``, ``overlap``, ``progress``, ``batch`` of :meth:`run`."""
        choice = choice or self.choose(image.rgb, task, instruction)
        out = self.run(image.rgb, choice.tasks, **run)
        return Restored(replace(image, rgb=out, frames=1), choice)  # (alpha, depth, profile, EXIF: the source's)

    def __call__(self, image: Any, task: str | Sequence[str] | None = None, instruction: str | None = None, tile: int | None = None,
                 overlap: int = DEFAULT_OVERLAP, progress: Callable[[int, int], None] | None = None, batch: int = 1,
                 return_choice: bool = False) -> Any:
        """Restore a path, a PIL image or a NumPy array and return the same kind.

        A path gives a :class:`Restored` (``.save(path)`` writes what the CLI writes, 16 bits
        included; ``.to_pil()``, ``.to_array()``); a PIL image gives a PIL image of its mode
        (16-bit grey stays 16-bit); an array gives an array of its dtype and layout. Name a
        ``task`` (or several, run in the order given: ``"derain,denoise"`` or a list), or give an
        ``instruction`` in plain words, or neither (blind mode). With
        ``return_choice=True`` also returns the :class:`TaskChoice`.
        """
        check_tiling(tile, overlap, batch)
        if isinstance(image, (str, os.PathLike)):
            loaded = load_image(image)
            warning = first_frame_only(image, loaded)
            if warning:
                warnings.warn(warning, stacklevel=2)
            restored = self.restore(loaded, task, instruction, tile=tile, overlap=overlap, progress=progress, batch=batch)
            return (restored, restored.choice) if return_choice else restored
        if isinstance(image, Image.Image):
            loaded, like = from_pil(image)
        elif isinstance(image, np.ndarray):
            loaded, like = from_array(image), image
        else:
            raise TypeError(f"a pipeline takes a path, a PIL image or a NumPy array, not {type(image).__name__}")
        restored = self.restore(loaded, task, instruction, tile=tile, overlap=overlap, progress=progress, batch=batch)
        out: Any = to_array(restored.image, restored.image.rgb, like)
        if isinstance(image, Image.Image):
            out = Image.fromarray(out)  # the mode follows the layout: L, LA, RGB, RGBA, I;16 or F
            if restored.image.icc is not None:  # the source's colour profile, embedded when it is saved
                out.info["icc_profile"] = restored.image.icc
        return (out, restored.choice) if return_choice else out

    def to(self, device: str | torch.device) -> RestorationPipeline:
        self.model.to(pick_device(str(device)))
        return self


def named_tasks(task: str | Sequence[str]) -> list[str]:
    """The tasks a caller named: ``"derain"``, ``"derain,denoise"`` or ``["derain", "denoise"]``, in that order."""
    names = task.split(",") if isinstance(task, str) else list(task)
    if not names or not all(isinstance(t, str) for t in names):
        raise ValueError(f"task {task!r}: give a task name, names separated by commas, or a list of names")
    names = [t.strip() for t in names]
    if "" in names:
        raise ValueError(f"task {task!r}: an empty task name")
    return names


def check_engine(engine: str) -> str:
    """``engine`` if it is one of :data:`ENGINES`, else a ``ValueError`` listing them."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    return engine


def check_tiling(tile: int | None, overlap: int, batch: int, flag: str = "") -> None:
    """Tiling settings, checked once before any image is read (``flag="--"`` words errors as options)."""
    if tile is not None and tile < 0:
        raise ValueError(f"{flag}tile {tile}: a tile size in pixels, or 0 for no tiling")
    if overlap < 0 or (tile and overlap >= tile):
        raise ValueError(f"{flag}overlap {overlap}: must be >= 0 and smaller than the tile ({tile})")
    if batch < 1:
        raise ValueError(f"{flag}batch {batch}: the number of tiles per forward pass, at least 1")
