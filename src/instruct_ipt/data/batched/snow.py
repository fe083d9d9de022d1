"""Batched ``desnow``: streak kernels drawn in the worker, flakes on the device."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..degradations.base import line_points, sample, splat
from ..degradations.snow import Snow
from .base import (
    Wrapper,
    centre_pad,
    convolve_reflect,
    gaussian_filter,
    gaussian_kernel1d,
    per_sample,
    reseeded,
    scalar,
    upper,
)


class BatchedSnow(Wrapper):
    """:class:`Snow`: the worker draws the op's parameters and, per scale, the streak kernel the op
    would use (an identity where the streak is shorter than 1.5 px), padded to the longest the config
    can draw; the device draws the seed maps, makes the flakes, and veils the image."""

    op: Snow

    def __init__(self, op: Snow) -> None:
        super().__init__(op)
        longest = upper(op.streak) * max(r for r, _ in op.scales) / op.scales[-1][0]
        self.line_size = int(np.ceil(longest)) // 2 * 2 + 3 if longest >= 1.5 else 1
        self.gauss = [gaussian_kernel1d(r) for r, _ in op.scales]  # fixed per scale

    def draw(self, clean: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        op = self.op
        ranges = (op.density, op.streak, op.angle, op.opacity, op.veil)
        density, streak, angle, opacity, veil = [sample(rng, r) for r in ranges]
        return self.pack(density, streak, angle, opacity, veil, float(rng.uniform(0.9, 1.0)))

    def pack(
        self, density: float, streak: float, angle: float, opacity: float, veil: float, colour: float
    ) -> dict[str, np.ndarray]:
        """The stackable draws for these parameters (the op's kernels, its ``/ max(1, length / 3)`` folded in)."""
        size = self.line_size
        lines = np.zeros((len(self.op.scales), size, size), np.float32)
        for j, (radius, _) in enumerate(self.op.scales):
            length = streak * radius / self.op.scales[-1][0]
            if length >= 1.5:
                k = splat(line_points(length, 90.0 + angle), int(np.ceil(length)) // 2 * 2 + 3)
                lines[j] = centre_pad(k / k.max() / max(1.0, length / 3), size)
            else:
                lines[j, size // 2, size // 2] = 1.0
        params = {"density": density, "opacity": opacity, "veil": veil, "colour": colour}
        return {"line": lines, **{k: scalar(v) for k, v in params.items()}}

    def render(self, clean: torch.Tensor, draws: dict[str, torch.Tensor], seed_maps: torch.Tensor) -> torch.Tensor:
        """The snowy image from the per-scale seed maps (n, scales, H, W): deterministic, the op's image."""
        flakes = []
        for j, (radius, _) in enumerate(self.op.scales):  # one fixed Gaussian per scale, as the op's
            k = torch.from_numpy(self.gauss[j]).to(clean.device, non_blocking=True)
            flakes.append(gaussian_filter(seed_maps[:, j : j + 1], k) * (2 * math.pi * radius**2))
        flakes = convolve_reflect(torch.cat(flakes, dim=1), draws["line"]).clamp(0, 1)
        mask = 1 - torch.prod(1 - flakes, dim=1, keepdim=True)
        veil = per_sample(draws["veil"])
        m = per_sample(draws["opacity"]) * mask
        return ((clean * (1 - veil) + veil) * (1 - m) + per_sample(draws["colour"]) * m).clamp(0, 1)

    def seed_maps(self, draws: dict[str, torch.Tensor], seeds: torch.Tensor, h: int, w: int,
                  device: torch.device) -> torch.Tensor:
        """Each scale's flake seeds (n, scales, h, w), as the op draws them: a pixel seeds a flake with
        probability (the scale's seeds per pixel) x ``density``, at a strength uniform in [0.5, 1)."""
        c = len(self.op.scales)
        u = torch.stack([torch.rand((2, c, h, w), generator=g, device=device) for g in reseeded(seeds, device)])
        per_px = torch.tensor([p for _, p in self.op.scales]).to(device, non_blocking=True)[:, None, None]
        return (u[:, 0] < per_px * draws["density"][:, None, None, None]) * (0.5 + 0.5 * u[:, 1])

    def apply(self, clean: torch.Tensor, draws: dict[str, torch.Tensor], seeds: torch.Tensor) -> torch.Tensor:
        return self.render(clean, draws, self.seed_maps(draws, seeds, clean.shape[-2], clean.shape[-1], clean.device))
