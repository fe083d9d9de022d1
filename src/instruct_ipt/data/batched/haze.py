"""Batched ``dehaze``: the depth proxy's 8x8 field drawn in the worker, scattering on the device."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from ..degradations.base import sample
from ..degradations.haze import Haze
from .base import Wrapper, per_sample, scalar

#: ``depth_proxy``'s default, which :class:`Haze` uses
RAMP_WEIGHT = 0.7


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """(x - min) / (ptp + 1e-8) per map, as ``depth_proxy`` rescales."""
    lo, hi = x.amin(dim=(-2, -1), keepdim=True), x.amax(dim=(-2, -1), keepdim=True)
    return (x - lo) / (hi - lo + 1e-8)


def depth_proxy(coarse: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``degradations.depth_proxy`` from its smoothed (n, 8, 8) field: (n, h, w) in [0, 1].

    ``scipy.ndimage.zoom(order=1)`` maps output pixel i to input i * 7 / (h - 1): bilinear with
    ``align_corners=True``.
    """
    field = _normalise(F.interpolate(coarse[:, None], size=(h, w), mode="bilinear", align_corners=True)[:, 0])
    ramp = torch.linspace(1.0, 0.0, h, dtype=torch.float64, device=coarse.device).float()[:, None]
    return _normalise(RAMP_WEIGHT * ramp + (1 - RAMP_WEIGHT) * field)


class BatchedHaze(Wrapper):
    """:class:`Haze`: the worker makes every draw the op makes, in its order (beta, airlight,
    depth_scale, the 8x8 field, smoothed as ``depth_proxy`` does); the device builds the depth map
    and applies Koschmieder's law. Deterministic given the draws: same image as the op."""

    op: Haze

    def draw(self, clean: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        op = self.op
        beta, airlight, scale = sample(rng, op.beta), sample(rng, op.airlight), sample(rng, op.depth_scale)
        coarse = gaussian_filter(rng.random((8, 8)).astype(np.float32), 1.0)
        return {"beta": scalar(beta), "airlight": scalar(airlight), "depth_scale": scalar(scale), "coarse": coarse}

    def apply(self, clean: torch.Tensor, draws: dict[str, torch.Tensor], seeds: torch.Tensor) -> torch.Tensor:
        d = depth_proxy(draws["coarse"], clean.shape[-2], clean.shape[-1])[:, None]
        t = torch.exp(-per_sample(draws["beta"] * draws["depth_scale"]) * d)
        a = per_sample(draws["airlight"])
        return (clean * t + a * (1 - t)).clamp(0, 1)
