"""Running a model on NumPy images: the glue between files and tensors."""

from __future__ import annotations

import numpy as np
import torch

from .model import InstructIPT


def pick_device(device: str | None = None) -> torch.device:
    """``auto``/None: CUDA when present, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.inference_mode()
def restore_array(model: InstructIPT, rgb: np.ndarray, task: str | int | None = None) -> np.ndarray:
    """Restore one float32 (H, W, 3) image; returns float32 (H, W, 3), not clamped.

    With ``task=None`` the model must be merged for a task already.
    """
    p = next(model.parameters())
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).unsqueeze(0).to(p.device, p.dtype)
    y = model(x, task)
    return y[0].float().cpu().numpy().transpose(1, 2, 0)
