"""``dehaze``: the atmospheric scattering model with a documented depth proxy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, zoom

from .base import Degraded, Range, check_image, check_range, sample


def depth_proxy(shape: tuple[int, int], rng: np.random.Generator, ramp_weight: float = 0.7) -> np.ndarray:
    """Relative depth in [0, 1] without a depth network.

    Outdoor photos are mostly far at the top and near at the bottom, so the proxy is a vertical
    ramp (1 at the top row, 0 at the bottom) mixed with a smooth random field (structures of
    about a quarter of the image) for ``1 - ramp_weight``, then rescaled to [0, 1]. It is smooth,
    so haze never follows fine texture, as with real depth.
    """
    h, w = shape
    ramp = np.linspace(1.0, 0.0, h, dtype=np.float32)[:, None].repeat(w, axis=1)
    coarse = gaussian_filter(rng.random((8, 8)).astype(np.float32), 1.0)
    field = zoom(coarse, (h / 8, w / 8), order=1)[:h, :w]
    field = (field - field.min()) / (np.ptp(field) + 1e-8)
    d = ramp_weight * ramp + (1 - ramp_weight) * field
    return ((d - d.min()) / (np.ptp(d) + 1e-8)).astype(np.float32)


@dataclass
class Haze:
    """``I = J * t + A * (1 - t)``, ``t = exp(-beta * depth_scale * d)`` (Koschmieder's law).

    ``beta`` (scattering) and ``airlight`` (grey, scalar) ranges follow RESIDE (beta 0.6-1.8,
    A 0.7-1.0). ``d`` is :func:`depth_proxy` in [0, 1], so with ``depth_scale=1`` the
    transmission spans ``[exp(-beta), 1]`` from top to bottom. ``extras`` holds ``t`` and ``d``.
    """

    beta: Range = (0.6, 1.8)
    airlight: Range = (0.7, 1.0)
    depth_scale: Range = 1.0
    task: str = "dehaze"

    def __post_init__(self) -> None:
        check_range("Haze", "beta", self.beta, 0)
        check_range("Haze", "airlight", self.airlight, 0, 1)
        check_range("Haze", "depth_scale", self.depth_scale, 0)

    def __call__(self, clean: np.ndarray, rng: np.random.Generator) -> Degraded:
        clean = check_image(clean)
        beta, a, scale = sample(rng, self.beta), sample(rng, self.airlight), sample(rng, self.depth_scale)
        d = depth_proxy(clean.shape[:2], rng)
        t = np.exp(-beta * scale * d).astype(np.float32)
        hazy = clean * t[..., None] + a * (1 - t[..., None])
        return Degraded(np.clip(hazy, 0, 1), {"beta": beta, "airlight": a, "depth_scale": scale}, {"transmission": t, "depth": d})
