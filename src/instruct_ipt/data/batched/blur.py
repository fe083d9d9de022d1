"""Batched ``deblur``: per-sample motion kernels drawn in the worker, convolved on the device."""

from __future__ import annotations

import numpy as np
import torch

from ..degradations.base import sample
from ..degradations.blur import MotionBlur, linear_kernel, trajectory_kernel
from .base import Wrapper, convolve_reflect, per_sample, reseeded, scalar, upper


class BatchedMotionBlur(Wrapper):
    """:class:`MotionBlur`: the worker draws the kernel (``kernel_size`` square) and noise sigma with
    the op's own code and draw order; the device convolves each sample with its kernel (one grouped
    conv2d) and adds the noise."""

    op: MotionBlur

    def draw(self, clean: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        op = self.op
        if rng.random() < op.trajectory_prob:
            exposure = sample(rng, op.exposure)
            kernel = trajectory_kernel(rng, op.kernel_size, exposure)
        else:
            length = min(sample(rng, op.length), op.kernel_size - 2)
            angle = float(rng.uniform(0, 180))
            kernel = linear_kernel(length, angle, op.kernel_size)
        return {"kernel": kernel, "sigma": scalar(sample(rng, op.noise_sigma))}

    def apply(self, clean: torch.Tensor, draws: dict[str, torch.Tensor], seeds: torch.Tensor) -> torch.Tensor:
        blurred = convolve_reflect(clean, draws["kernel"][:, None])
        if upper(self.op.noise_sigma) > 0:  # skip the noise fields when the config never adds noise
            dev = clean.device
            noise = torch.stack([torch.randn(clean.shape[1:], generator=g, device=dev) for g in reseeded(seeds, dev)])
            blurred = blurred + noise * (per_sample(draws["sigma"]) / 255.0)
        return blurred.clamp(0, 1)
