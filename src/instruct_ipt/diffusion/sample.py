"""DDIM sampling of the masked-image diffusion model: fill a mask (``inpaint``) or extend an image
(``outpaint``).

The U-Net is convolutional, so an image of any size at least the model's ``sample_size`` runs at
its own size (edges reflected up to a multiple of the U-Net's stride, cropped afterwards); a
smaller one is refused, since the model never saw scenes that small. DDIM with eta 0 is
deterministic: the seed fixes the starting noise, and with it the result.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .masks import MaskError, check_mask
from .model import MaskedDiffusion, condition


class ImageSizeError(ValueError):
    """An image the model cannot take (smaller than its input)."""


def check_size(model: MaskedDiffusion, h: int, w: int) -> None:
    s = model.config.sample_size
    if h < s or w < s:
        raise ImageSizeError(f"the image is {w}x{h} but this model's input is {s}x{s}: "
                             f"it needs an image at least that large")


@torch.no_grad()
def sample_batch(model: MaskedDiffusion, images: torch.Tensor, masks: torch.Tensor,
                 tasks: Sequence[str] | str | None, steps: int = 50, seed: int = 0,
                 progress: bool = False) -> torch.Tensor:
    """Generate ``(B, 3, H, W)`` in [-1, 1] for ``images`` in [-1, 1] and ``masks`` (B, 1, H, W),
    H and W multiples of the model's stride. Unknown pixels of the result are the model's; known
    ones are its reconstruction too (paste them back for the final image: :func:`inpaint`)."""
    from tqdm import tqdm

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = next(model.parameters()).device
    scheduler = model.sampling_scheduler()
    scheduler.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(images.shape, generator=gen).to(device)
    cond = condition(images, masks).to(device)
    tasks = tasks if model.modulation is not None else None
    for t in tqdm(scheduler.timesteps, desc="sample", unit="step", disable=not progress):
        eps = model(x, t.to(device).expand(x.shape[0]), cond, tasks)
        x = scheduler.step(eps, t, x, eta=0.0).prev_sample
    return x.clamp(-1.0, 1.0).cpu()


def inpaint(model: MaskedDiffusion, image: np.ndarray, mask: np.ndarray, task: str, steps: int = 50,
            seed: int = 0, progress: bool = False, paste: bool = True) -> np.ndarray:
    """``image`` (H, W, 3) in [0, 1] with ``mask`` (1 = generate) filled by the model for ``task``;
    the known pixels are pasted back unless ``paste=False``. Raises :class:`MaskError` for a bad
    mask and :class:`ImageSizeError` for an image smaller than the model's input."""
    model.check_task(task)
    mask = check_mask(image, mask)
    h, w = image.shape[:2]
    check_size(model, h, w)
    m = model.config.multiple
    ph, pw = -h % m, -w % m
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None] * 2.0 - 1.0
    k = torch.from_numpy(mask)[None, None]
    if ph or pw:  # edges reflected (the hidden pixels blanked first, so none leaks), cropped off after
        x = F.pad(x * (1.0 - k), (0, pw, 0, ph), mode="reflect")
        k = F.pad(k, (0, pw, 0, ph), mode="reflect")
    out = sample_batch(model, x, k, task, steps=steps, seed=seed, progress=progress)[0, :, :h, :w]
    result = ((out.permute(1, 2, 0).numpy() + 1.0) / 2.0).astype(np.float32)
    if paste:
        result = np.where(mask[..., None] > 0.5, result, image).astype(np.float32)
    return result


__all__ = ["ImageSizeError", "MaskError", "check_size", "inpaint", "sample_batch"]
