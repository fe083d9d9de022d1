"""Running a model on NumPy images: the glue between files and tensors, and tiling for large images."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .model import InstructIPT

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
def _run(model: InstructIPT, rgb: np.ndarray, task: str | int | None) -> np.ndarray:
    """One forward pass with the input in channels-last memory layout, which the model keeps
    through its layer norms and attention so oneDNN's faster channels-last convolutions run
    (small model, one 768x432 image, 2 CPU cores: 12.0 s NCHW, 7.8 s channels-last; 5.5 s once
    the attention kept the layout too, see ``models/blocks.py``). Layout never
    changes the values; the model itself is left as it is."""
    p = next(model.parameters())
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).unsqueeze(0).to(p.device, p.dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    return model(x, task)[0].float().cpu().numpy().transpose(1, 2, 0)


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
              progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Apply ``fn`` tile by tile and blend the overlaps with linear ramps (no visible seams).

    Tiles are ``tile`` px squares stepping by ``tile - overlap``; every pixel's result is the
    weighted mean of the tiles covering it. Only one tile is in flight, so peak memory depends on
    ``tile``, not on the image.
    """
    if overlap >= tile:
        raise ValueError(f"overlap ({overlap}) must be smaller than the tile ({tile})")
    h, w = rgb.shape[:2]
    if h <= tile and w <= tile:
        return fn(rgb)
    stride = tile - overlap
    rows, cols = _starts(h, tile, stride), _starts(w, tile, stride)
    out = np.zeros((h, w, 3), np.float32)
    weight = np.zeros((h, w, 1), np.float32)
    total, done = len(rows) * len(cols), 0
    for r in rows:
        for c in cols:
            patch = rgb[r : r + tile, c : c + tile]
            wt = (_ramp(patch.shape[0], overlap)[:, None] * _ramp(patch.shape[1], overlap)[None, :])[..., None]
            out[r : r + patch.shape[0], c : c + patch.shape[1]] += fn(patch) * wt
            weight[r : r + patch.shape[0], c : c + patch.shape[1]] += wt
            done += 1
            if progress:
                progress(done, total)
    return out / weight


def restore_array(
    model: InstructIPT,
    rgb: np.ndarray,
    task: str | int | None = None,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Restore one float32 (H, W, 3) image; returns float32 (H, W, 3), not clamped.

    ``tile=None`` tiles automatically above :data:`AUTO_TILE_PIXELS` (with :data:`DEFAULT_TILE`);
    ``tile=0`` never tiles. With ``task=None`` the model must be merged for a task already.
    """
    if tile is None:
        tile = DEFAULT_TILE if rgb.shape[0] * rgb.shape[1] > AUTO_TILE_PIXELS else 0
    if tile:
        return run_tiled(lambda patch: _run(model, patch, task), rgb, tile, overlap, progress)
    return _run(model, rgb, task)
