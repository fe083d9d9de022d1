"""``desnow``: multi-scale snow particles and streaks with their masks (CSD/Snow100K-like)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from .base import Degraded, Range, check_image, check_range, convolve_reflect, line_points, sample, splat

#: (particle radius in px, seeds per pixel): many small flakes, fewer large ones
SNOW_SCALES: tuple[tuple[float, float], ...] = ((0.8, 0.004), (1.6, 0.0012), (3.0, 0.0003))


@dataclass
class Snow:
    """Soft snow flakes at several scales, smeared along the fall direction, over a light veil.

    For each scale, random seeds become Gaussian flakes of that radius; ``streak`` px of motion
    along ``angle`` (degrees from vertical) turns them into short streaks. The flakes' union is
    the mask ``m`` (``extras['mask']``); ``y = (x (1-v) + v) (1 - o m) + o m c`` with veil ``v``,
    opacity ``o`` and snow colour ``c``. ``density`` scales the seed counts of every scale.
    """

    density: Range = (0.5, 2.0)
    streak: Range = (0.0, 10.0)
    angle: Range = (-25.0, 25.0)
    opacity: Range = (0.7, 1.0)
    veil: Range = (0.0, 0.15)
    scales: tuple[tuple[float, float], ...] = SNOW_SCALES
    task: str = "desnow"

    def __post_init__(self) -> None:
        for name, low, high in (("density", 0, None), ("streak", 0, None), ("angle", None, None), ("opacity", 0, 1),
                                ("veil", 0, 1)):
            check_range("Snow", name, getattr(self, name), low, high)
        if not self.scales:
            raise ValueError("Snow.scales: at least one (radius px, seeds per pixel) pair")
        for scale in self.scales:
            if not isinstance(scale, (tuple, list)) or len(scale) != 2:
                raise ValueError(f"Snow.scales: (radius px, seeds per pixel) pairs, got {scale!r}")
            check_range("Snow", "scales radius", scale[0], 0, above=True)
            check_range("Snow", "scales seeds per pixel", scale[1], 0, 1)

    def __call__(self, clean: np.ndarray, rng: np.random.Generator) -> Degraded:
        clean = check_image(clean)
        h, w = clean.shape[:2]
        density, streak, angle = sample(rng, self.density), sample(rng, self.streak), sample(rng, self.angle)
        opacity, veil = sample(rng, self.opacity), sample(rng, self.veil)
        mask = np.zeros((h, w), np.float32)
        for radius, per_px in self.scales:
            seeds = (rng.random((h, w)) < per_px * density) * rng.uniform(0.5, 1.0, (h, w))
            flakes = gaussian_filter(seeds.astype(np.float32), radius) * (2 * np.pi * radius**2)
            length = streak * radius / self.scales[-1][0]  # near (large) flakes streak more
            if length >= 1.5:
                k = splat(line_points(length, 90.0 + angle), int(np.ceil(length)) // 2 * 2 + 3)
                flakes = convolve_reflect(flakes, k / k.max()) / max(1.0, length / 3)
            mask = 1 - (1 - mask) * (1 - np.clip(flakes, 0, 1))
        colour = float(rng.uniform(0.9, 1.0))
        veiled = clean * (1 - veil) + veil
        m = (opacity * mask)[..., None]
        snowy = veiled * (1 - m) + colour * m
        params = {"density": density, "streak": streak, "angle": angle, "opacity": opacity, "veil": veil}
        return Degraded(np.clip(snowy, 0, 1).astype(np.float32), params, {"mask": mask})
