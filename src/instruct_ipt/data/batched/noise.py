"""Batched ``denoise``: Gaussian (and optional Poisson) noise drawn on the device."""

from __future__ import annotations

import numpy as np
import torch

from ..degradations.base import sample
from ..degradations.noise import Noise
from .base import Wrapper, per_sample, reseeded, scalar


class BatchedNoise(Wrapper):
    """:class:`Noise` with ``sigma`` (and ``poisson_peak``) drawn in the worker, the noise fields on the device."""

    op: Noise

    def draw(self, clean: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        out = {"sigma": scalar(sample(rng, self.op.sigma))}  # the op's own first draws, in its order
        if self.op.poisson_peak is not None:
            out["poisson_peak"] = scalar(sample(rng, self.op.poisson_peak))
        return out

    def apply(self, clean: torch.Tensor, draws: dict[str, torch.Tensor], seeds: torch.Tensor) -> torch.Tensor:
        poisson = self.op.poisson_peak is not None
        peak = per_sample(draws["poisson_peak"]) if poisson else None
        rate = clean.clamp(0, 1) * peak if poisson else None
        photons, noise = [], []
        for i, g in enumerate(reseeded(seeds, clean.device)):  # photons first, as the op draws them
            if poisson:
                photons.append(torch.poisson(rate[i], generator=g))
            noise.append(torch.randn(clean.shape[1:], generator=g, device=clean.device))
        signal = torch.stack(photons) / peak if poisson else clean
        noisy = signal + torch.stack(noise) * (per_sample(draws["sigma"]) / 255.0)
        return noisy.clamp(0, 1) if self.op.clip else noisy
