"""Batched ``derain``: streak-layer kernels drawn in the worker, seed maps and streaks on the device."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..degradations.base import line_points, sample, splat
from ..degradations.rain import Rain
from .base import Wrapper, centre_pad, convolve_reflect, gaussian_filter, gaussian_kernel1d, reseeded, upper

#: one streak layer: (density, length, width, brightness, angle in degrees from vertical)
Layer = tuple[float, float, float, float, float]


class BatchedRain(Wrapper):
    """:class:`Rain`: the worker draws the layers' parameters and builds each layer's line kernel
    and width Gaussian exactly as :meth:`Rain.streaks` does, padded to the largest the config can
    draw (``max_layers`` layers, unused ones inert); the device draws the seed maps and smears them.
    """

    op: Rain

    def __init__(self, op: Rain) -> None:
        super().__init__(op)
        self.max_layers = max(1, round(upper(op.layers)))
        self.line_size = int(np.ceil(upper(op.length))) // 2 * 2 + 3
        self.gauss_radius = int(4.0 * max(0.0, (upper(op.width) - 0.5) / 2) + 0.5)

    def draw(self, clean: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        op = self.op
        n_layers, angle = round(sample(rng, op.layers)), sample(rng, op.angle)
        layers: list[Layer] = []
        for i in range(max(1, n_layers)):
            density, length, width, bright = [sample(rng, r) for r in (op.density, op.length, op.width, op.brightness)]
            layers.append((density, length, width, bright, angle + (float(rng.uniform(-5, 5)) if i else 0.0)))
        return self.pack(layers)

    def pack(self, layers: Sequence[Layer]) -> dict[str, np.ndarray]:
        """The stackable draws of these layers (what :meth:`Rain.streaks` builds from them)."""
        n, size, r = self.max_layers, self.line_size, self.gauss_radius
        out = {
            "line": np.zeros((n, size, size), np.float32),
            "gauss": np.zeros((n, 2 * r + 1), np.float32),
            "gain": np.ones(n, np.float32),
            "density": np.zeros(n, np.float32),
            "brightness": np.zeros(n, np.float32),  # 0: an unused layer adds nothing
        }
        out["gauss"][:, r] = 1.0  # identity: no width blur
        for i, (density, length, width, bright, angle) in enumerate(layers):
            k = splat(line_points(length, 90.0 + angle), int(np.ceil(length)) // 2 * 2 + 3)
            out["line"][i] = centre_pad(k / k.max(), size)
            if width > 0.5:
                out["gauss"][i] = gaussian_kernel1d((width - 0.5) / 2, r)
                out["gain"][i] = 1 + (width - 0.5)
            out["density"][i], out["brightness"][i] = density, bright
        return out

    def render(self, clean: torch.Tensor, draws: dict[str, torch.Tensor], seed_maps: torch.Tensor) -> torch.Tensor:
        """``clip(x + S)`` from the layers' seed maps (n, layers, H, W): deterministic, the op's streaks."""
        layers = convolve_reflect(seed_maps, draws["line"])
        layers = gaussian_filter(layers, draws["gauss"]) * draws["gain"][..., None, None]
        layers = layers.clamp(0, 1) * draws["brightness"][..., None, None]
        rain = 1 - torch.prod(1 - layers, dim=1, keepdim=True)  # = layers combined one by one, like light
        return (clean + rain).clamp(0, 1)

    def seed_maps(self, draws: dict[str, torch.Tensor], seeds: torch.Tensor, h: int, w: int,
                  device: torch.device) -> torch.Tensor:
        """Each layer's streak seeds (n, layers, h, w), as the op draws them: a pixel seeds a streak
        with probability ``density``, at a strength uniform in [0.6, 1) (0 elsewhere)."""
        u = torch.stack([torch.rand((2, self.max_layers, h, w), generator=g, device=device)
                         for g in reseeded(seeds, device)])
        return (u[:, 0] < draws["density"][..., None, None]) * (0.6 + 0.4 * u[:, 1])

    def apply(self, clean: torch.Tensor, draws: dict[str, torch.Tensor], seeds: torch.Tensor) -> torch.Tensor:
        return self.render(clean, draws, self.seed_maps(draws, seeds, clean.shape[-2], clean.shape[-1], clean.device))
