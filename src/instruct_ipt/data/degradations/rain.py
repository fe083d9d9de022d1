"""``derain``: synthetic rain-streak layers added to the image (Rain100L/H-like)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from .base import Degraded, Range, check_image, check_range, convolve_reflect, line_points, sample, splat


@dataclass
class Rain:
    """``y = clip(x + S)``: each layer of ``S`` is sparse random seeds smeared along a line.

    ``density`` is the share of pixels seeding a streak, ``length``/``width`` are in px,
    ``angle`` in degrees from vertical (shared by a layer, jittered by 5 degrees between layers),
    ``brightness`` the peak streak intensity. Use :meth:`light` (Rain100L-like: sparse, thin, one
    direction) or :meth:`heavy` (Rain100H-like: dense, long, wide, several layers).
    """

    density: Range = (0.001, 0.004)
    length: Range = (10.0, 40.0)
    angle: Range = (-30.0, 30.0)
    width: Range = (0.5, 2.0)
    brightness: Range = (0.4, 0.8)
    layers: Range = (1, 2)
    task: str = "derain"

    def __post_init__(self) -> None:
        for name, low, high in (("density", 0, 1), ("length", 0, None), ("angle", None, None), ("width", 0, None),
                                ("brightness", 0, 1)):
            check_range("Rain", name, getattr(self, name), low, high)
        check_range("Rain", "layers", self.layers, 0, above=True)  # (rounded; at least one layer is drawn)

    @classmethod
    def light(cls) -> Rain:
        return cls(density=(0.001, 0.005), length=(10.0, 25.0), width=(0.5, 1.0), brightness=(0.4, 0.7), layers=1)

    @classmethod
    def heavy(cls) -> Rain:
        return cls(density=(0.002, 0.004), length=(20.0, 40.0), width=(1.0, 2.0), brightness=(0.4, 0.7), layers=(2, 3))

    def streaks(self, shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
        h, w = shape
        n_layers = round(sample(rng, self.layers))
        angle = sample(rng, self.angle)
        params = {"layers": float(n_layers), "angle": angle}
        rain = np.zeros((h, w), np.float32)
        for i in range(max(1, n_layers)):
            density, length = sample(rng, self.density), sample(rng, self.length)
            width, bright = sample(rng, self.width), sample(rng, self.brightness)
            seeds = (rng.random((h, w)) < density) * rng.uniform(0.6, 1.0, (h, w))
            a = angle + (rng.uniform(-5, 5) if i else 0.0)
            kernel = splat(line_points(length, 90.0 + a), int(np.ceil(length)) // 2 * 2 + 3)
            layer = convolve_reflect(seeds.astype(np.float32), kernel / kernel.max())
            if width > 0.5:
                layer = gaussian_filter(layer, sigma=(width - 0.5) / 2) * (1 + (width - 0.5))
            layer = np.clip(layer, 0, 1) * bright
            rain = 1 - (1 - rain) * (1 - layer)  # layers combine like light: never above 1
            params.update({f"density_{i}": density, f"length_{i}": length, f"width_{i}": width})
        return rain.astype(np.float32), params

    def __call__(self, clean: np.ndarray, rng: np.random.Generator) -> Degraded:
        clean = check_image(clean)
        rain, params = self.streaks(clean.shape[:2], rng)
        return Degraded(np.clip(clean + rain[..., None], 0, 1), params, {"streaks": rain})
