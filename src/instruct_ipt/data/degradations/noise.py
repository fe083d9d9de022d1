"""``denoise``: additive white Gaussian noise, optionally signal-dependent (Poisson-Gaussian)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Degraded, Range, check_image, check_range, sample


@dataclass
class Noise:
    """``y = x + n``, ``n ~ N(0, (sigma/255)^2)``; with ``poisson_peak`` the signal is first
    replaced by ``Poisson(x * peak) / peak`` (photon noise, stronger in bright areas).

    ``sigma`` is on the 0-255 scale, as in every denoising table. ``clip=False`` keeps the raw
    float noise, the convention of the standard AWGN benchmarks.
    """

    sigma: Range = (0.0, 50.0)
    poisson_peak: Range | None = None
    clip: bool = False
    task: str = "denoise"

    def __post_init__(self) -> None:
        check_range("Noise", "sigma", self.sigma, 0)
        if self.poisson_peak is not None:
            check_range("Noise", "poisson_peak", self.poisson_peak, 0, above=True)

    def __call__(self, clean: np.ndarray, rng: np.random.Generator) -> Degraded:
        clean = check_image(clean)
        sigma = sample(rng, self.sigma)
        params = {"sigma": sigma}
        signal = clean
        if self.poisson_peak is not None:
            peak = sample(rng, self.poisson_peak)
            signal = (rng.poisson(np.clip(clean, 0, 1) * peak) / peak).astype(np.float32)
            params["poisson_peak"] = peak
        noisy = signal + rng.normal(0.0, sigma / 255.0, clean.shape).astype(np.float32)
        if self.clip:
            noisy = np.clip(noisy, 0, 1)
        return Degraded(noisy.astype(np.float32), params)
