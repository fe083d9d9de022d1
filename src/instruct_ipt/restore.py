"""Restoring one image end to end: choose the task(s), run them in order, keep the image's kind."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .data.images import LoadedImage, load_image
from .inference import DEFAULT_OVERLAP, restore_array

if TYPE_CHECKING:
    from .model import InstructIPT


@dataclass
class TaskChoice:
    tasks: list[str]
    confidences: list[float]
    #: "task" (named by the caller), "instruction" (understood from text) or "blind" (seen in the image)
    source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        how = {"task": "as asked", "instruction": "from the instruction", "blind": "seen in the image (blind mode)"}
        parts = ", then ".join(f"{t} ({c:.0%})" if self.source != "task" else t for t, c in zip(self.tasks, self.confidences))
        return f"{parts} [{how[self.source]}]"


def choose_tasks(model: InstructIPT, rgb: np.ndarray | None, task: str | None = None, instruction: str | None = None) -> TaskChoice:
    """A named task wins; else an instruction is interpreted; else blind mode looks at the image."""
    if task is not None and instruction is not None:
        raise ValueError("give a task or an instruction, not both")
    if task is not None:
        model.task_index(task)  # unknown task: a clear error listing the model's tasks
        return TaskChoice([task], [1.0], "task")
    if instruction is not None:
        result = model.interpreter()(instruction)
        return TaskChoice(result.tasks, result.confidences, "instruction")
    if rgb is None:
        raise ValueError("blind mode needs the image")
    probs = model.degradation_classifier().predict(rgb)
    candidates = {t: p for t, p in probs.items() if t in model.tasks}
    if not candidates:
        raise ValueError(f"blind mode knows none of this model's tasks ({', '.join(model.tasks)}); name a task")
    best = max(candidates, key=candidates.get)
    return TaskChoice([best], [round(candidates[best], 4)], "blind")


def run_tasks(model: InstructIPT, rgb: np.ndarray, tasks: list[str], tile: int | None = None,
              overlap: int = DEFAULT_OVERLAP, progress=None) -> np.ndarray:
    """Apply the tasks one after the other (each output clamped to [0, 1] before the next).

    ``tile``: see :func:`~instruct_ipt.inference.restore_array` (None: automatic above a size).
    """
    out = rgb
    for t in tasks:
        if model.modulated:
            model.unmerge().merge(t)
            out = restore_array(model, out, None, tile, overlap, progress)
        else:
            out = restore_array(model, out, t, tile, overlap, progress)
        out = np.clip(out, 0.0, 1.0)
    if model.modulated:
        model.unmerge()
    return out


def _from_array(arr: np.ndarray) -> tuple[LoadedImage, str]:
    kind = "float" if arr.dtype.kind == "f" else "uint16" if arr.dtype == np.uint16 else "uint8"
    if kind == "uint8":
        scaled = arr.astype(np.float32) / 255.0
    elif kind == "uint16":
        scaled = arr.astype(np.float32) / 65535.0
    else:
        scaled = arr.astype(np.float32)
    if scaled.ndim == 2:
        return LoadedImage(np.repeat(scaled[..., None], 3, axis=2), None, True, 16 if kind == "uint16" else 8), kind
    if scaled.ndim == 3 and scaled.shape[2] in (1, 3, 4):
        if scaled.shape[2] == 1:
            return LoadedImage(np.repeat(scaled, 3, axis=2), None, True, 8), kind
        alpha = scaled[..., 3] if scaled.shape[2] == 4 else None
        return LoadedImage(np.ascontiguousarray(scaled[..., :3]), alpha, False, 8), kind
    raise ValueError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image array, got shape {arr.shape}")


def _to_array(img: LoadedImage, rgb: np.ndarray, kind: str, channels: int) -> np.ndarray:
    out = rgb.mean(axis=2, keepdims=True) if img.grey else rgb
    if img.alpha is not None:
        out = np.concatenate([out, img.alpha[..., None]], axis=2)
    if channels == 2:
        out = out[..., 0]
    if kind == "uint8":
        return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)
    if kind == "uint16":
        return (np.clip(out, 0, 1) * 65535 + 0.5).astype(np.uint16)
    return out.astype(np.float32)


def restore_image(
    model: InstructIPT, image: Any, task: str | None = None, instruction: str | None = None
) -> tuple[Any, TaskChoice]:
    """Restore a path, PIL image or NumPy array; returns the same kind (a PIL image for a path)."""
    if isinstance(image, (str, os.PathLike)):
        loaded = load_image(Path(image))
    elif isinstance(image, Image.Image):
        mode = "RGBA" if "A" in image.getbands() else ("L" if image.mode in ("L", "1", "I;16", "I") else "RGB")
        loaded, _ = _from_array(np.asarray(image.convert(mode)))
    elif isinstance(image, np.ndarray):
        loaded, kind = _from_array(image)
    else:
        raise TypeError(f"restore() takes a path, a PIL image or a NumPy array, not {type(image).__name__}")
    choice = choose_tasks(model, loaded.rgb, task, instruction)
    out = run_tasks(model, loaded.rgb, choice.tasks)
    if isinstance(image, np.ndarray):
        return _to_array(loaded, out, kind, image.ndim), choice
    return to_pil(loaded, out), choice


def to_pil(img: LoadedImage, rgb: np.ndarray) -> Image.Image:
    """8-bit PIL image in the source's layout (grey stays grey, alpha is kept)."""
    if img.grey:
        out = Image.fromarray((np.clip(rgb.mean(axis=2), 0, 1) * 255 + 0.5).astype(np.uint8), "L")
    else:
        out = Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
    if img.alpha is not None:
        out.putalpha(Image.fromarray((np.clip(img.alpha, 0, 1) * 255 + 0.5).astype(np.uint8), "L"))
    return out
