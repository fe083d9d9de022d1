"""Running a model on NumPy images: the glue between files and tensors, and tiling for large images."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .models import CONFIGURED_SPAN

#: images with more pixels than this are restored in tiles by default (bounded peak memory)
AUTO_TILE_PIXELS = 1024 * 1024
DEFAULT_TILE = 512
DEFAULT_OVERLAP = 32


def pick_device(device: str | None = None) -> torch.device:
    """``auto``/None: CUDA when present, else CPU. A device this machine lacks is a ``ValueError``
    that says so in one line (not a traceback from deep inside the first copy to it)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"--device {device}: not a device name (use auto, cpu, cuda or cuda:N)") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__}); "
                             "use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type not in ("cpu", "mps"):
        raise ValueError(f"--device {device}: not supported here (use auto, cpu, cuda or cuda:N)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available on this machine; use --device cpu or auto")
    return dev


@torch.inference_mode()
def _run(model: nn.Module, batch: np.ndarray, task: str | int | None, grid_span=CONFIGURED_SPAN) -> np.ndarray:
    """One forward pass over a stack of same-size images ``(N, H, W, 3)``, the input in
    channels-last memory layout, which the model keeps through its layer norms and attention so
    oneDNN's faster channels-last convolutions run (small model, one 768x432 image, 2 CPU cores:
    12.0 s NCHW, 7.8 s channels-last; 5.5 s once the attention kept the layout too, see
    ``models/blocks.py``). Layout never changes the values; the model itself is left as it is.

    A stack that does not fit in GPU memory is run in halves (down to one image).
    """
    p = next(model.parameters())
    try:
        x = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))).to(p.device, p.dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        return model(x, task, grid_span=grid_span).float().cpu().numpy().transpose(0, 2, 3, 1)
    except torch.cuda.OutOfMemoryError:  # (the top-level alias is torch >= 2.5; we allow 2.2)
        if len(batch) == 1:
            raise
        torch.cuda.empty_cache()
        half = len(batch) // 2
        return np.concatenate([_run(model, batch[:half], task, grid_span), _run(model, batch[half:], task, grid_span)])


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _ramp(n: int, overlap: int) -> np.ndarray:
    """1 inside, rising linearly over ``overlap`` pixels at both ends (never exactly 0)."""
    w = np.ones(n, np.float32)
    k = min(overlap, n // 2)
    if k > 0:
        r = (np.arange(k, dtype=np.float32) + 0.5) / k
        w[:k], w[n - k :] = r, r[::-1]
    return w


def run_tiled(fn: Callable[[np.ndarray], np.ndarray], rgb: np.ndarray, tile: int, overlap: int,
              progress: Callable[[int, int], None] | None = None, batch: int = 1) -> np.ndarray:
    """Apply ``fn`` tile by tile and blend the overlaps with linear ramps (no visible seams).

    ``fn`` maps a stack of tiles ``(N, h, w, 3)`` to its results. Tiles are ``tile`` px squares
    stepping by ``tile - overlap`` (the last one in each row and column ends at the border, so
    all are the same size); every pixel's result is the weighted mean of the tiles covering it.
    ``batch`` tiles go through ``fn`` together, so peak memory depends on ``tile`` and ``batch``,
    not on the image. Batching never changes a tile's result beyond float rounding.
    """
    if overlap >= tile:
        raise ValueError(f"overlap ({overlap}) must be smaller than the tile ({tile})")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    h, w = rgb.shape[:2]
    if h <= tile and w <= tile:
        return fn(rgb[None])[0]
    stride = tile - overlap
    corners = [(r, c) for r in _starts(h, tile, stride) for c in _starts(w, tile, stride)]
    th, tw = min(tile, h), min(tile, w)
    wt = (_ramp(th, overlap)[:, None] * _ramp(tw, overlap)[None, :])[..., None]
    out = np.zeros((h, w, 3), np.float32)
    weight = np.zeros((h, w, 1), np.float32)
    for i in range(0, len(corners), batch):
        group = corners[i : i + batch]
        results = fn(np.stack([rgb[r : r + th, c : c + tw] for r, c in group]))
        for (r, c), res in zip(group, results):
            out[r : r + th, c : c + tw] += res * wt
            weight[r : r + th, c : c + tw] += wt
        if progress:
            progress(i + len(group), len(corners))
    return out / weight


def restore_array(
    model: nn.Module,
    rgb: np.ndarray,
    task: str | int | None = None,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    progress: Callable[[int, int], None] | None = None,
    batch: int = 1,
    grid_span=CONFIGURED_SPAN,
) -> np.ndarray:
    """Restore one float32 (H, W, 3) image with an :class:`~instruct_ipt.model.InstructIPT`;
    returns float32 (H, W, 3), not clamped.

    ``tile=None`` tiles automatically above :data:`AUTO_TILE_PIXELS` (with :data:`DEFAULT_TILE`);
    ``tile=0`` never tiles; ``batch`` tiles run in one forward pass. With ``task=None`` the model
    must be merged for a task (``with model.merged(task):``). ``grid_span`` is passed to the
    model's forward (default: the task's own).
    """
    return restore_with(lambda images: _run(model, images, task, grid_span), rgb, tile, overlap, progress, batch)


def restore_with(
    fn: Callable[[np.ndarray], np.ndarray],
    rgb: np.ndarray,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    progress: Callable[[int, int], None] | None = None,
    batch: int = 1,
) -> np.ndarray:
    """:func:`restore_array`'s tiling around any ``fn`` mapping ``(N, h, w, 3)`` stacks to results
    (a PyTorch model, an onnxruntime session): every engine tiles the same way, so they agree."""
    if tile is None:
        tile = DEFAULT_TILE if rgb.shape[0] * rgb.shape[1] > AUTO_TILE_PIXELS else 0
    if tile:
        return run_tiled(fn, rgb, tile, overlap, progress, batch)
    return fn(rgb[None])[0]
