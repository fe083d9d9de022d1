"""``deblur``: camera-shake motion blur from random trajectories (Boracchi & Foi), or linear motion."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Degraded, Range, check_image, check_range, convolve_reflect, line_points, sample, splat


def trajectory(rng: np.random.Generator, max_length: float, steps: int = 256) -> np.ndarray:
    """A camera-shake trajectory, (steps, 2) points: a random walk with inertia.

    After Boracchi & Foi (2012), "Modeling the performance of image restoration from motion
    blur": the velocity keeps its direction (inertia) while Gaussian jitter, a pull back towards
    the start (centripetal term) and rare abrupt turns (impulsive shakes) perturb it; the speed
    is fixed so the path has length ``max_length``. Each kernel draws its own shake behaviour.
    """
    centripetal = 0.7 * rng.random()
    shake_prob = 0.2 * rng.random()
    jitter = 10.0 * rng.random()
    anxiety = 0.1 * rng.random()
    step = max_length / (steps - 1)
    pos = np.zeros(steps, dtype=np.complex128)
    v = step * np.exp(1j * 2 * np.pi * rng.random())
    kicks = rng.standard_normal((steps, 2)) @ np.array([1, 1j])
    turns = rng.random(steps) < shake_prob
    turn_angles = np.pi + (rng.random(steps) - 0.5)
    for t in range(steps - 1):
        dv = anxiety * (jitter * kicks[t] - centripetal * pos[t]) * step
        if turns[t]:
            dv += 2 * v * np.exp(1j * turn_angles[t])
        v = v + dv
        v = v / (abs(v) + 1e-12) * step
        pos[t + 1] = pos[t] + v
    return np.stack([pos.real, pos.imag], axis=1)


def trajectory_kernel(rng: np.random.Generator, size: int = 31, exposure: float = 1.0) -> np.ndarray:
    """A blur kernel: the first ``exposure`` fraction of a trajectory, rasterised and normalised."""
    path = trajectory(rng, max_length=size * (0.6 + 0.4 * rng.random()))
    path = path[: max(2, round(exposure * len(path)))]
    extent = np.ptp(path, axis=0).max()
    if extent > size - 3:  # keep the whole path inside the kernel
        path = path * (size - 3) / extent
    return splat(path, size)


def linear_kernel(length: float, angle_deg: float, size: int | None = None) -> np.ndarray:
    """Uniform linear motion of ``length`` px at ``angle_deg``, anti-aliased, sum 1."""
    size = size or int(np.ceil(length)) // 2 * 2 + 3
    return splat(line_points(length, angle_deg), size)


@dataclass
class MotionBlur:
    """Convolve with a random motion kernel (returned in ``extras['kernel']``), then add noise.

    A ``trajectory_prob`` share of kernels are camera-shake trajectories of up to
    ``kernel_size`` px; the rest are linear motions of ``length`` px at a random angle.
    """

    kernel_size: int = 31
    trajectory_prob: float = 0.8
    exposure: Range = (0.5, 1.0)
    length: Range = (5.0, 25.0)
    noise_sigma: Range = 0.0
    task: str = "deblur"

    def __post_init__(self) -> None:
        if isinstance(self.kernel_size, bool) or not isinstance(self.kernel_size, (int, np.integer)) \
                or self.kernel_size < 3 or self.kernel_size % 2 == 0:
            raise ValueError(f"MotionBlur.kernel_size: an odd number >= 3, got {self.kernel_size!r}")
        check_range("MotionBlur", "trajectory_prob", self.trajectory_prob, 0, 1, one=True)
        check_range("MotionBlur", "exposure", self.exposure, 0, 1, above=True)
        check_range("MotionBlur", "length", self.length, 0)
        check_range("MotionBlur", "noise_sigma", self.noise_sigma, 0)

    @property
    def margin(self) -> int:
        """Pixels of real context needed on each side: a pixel's blur reaches this far."""
        return self.kernel_size // 2

    def __call__(self, clean: np.ndarray, rng: np.random.Generator) -> Degraded:
        clean = check_image(clean)
        if rng.random() < self.trajectory_prob:
            exposure = sample(rng, self.exposure)
            kernel = trajectory_kernel(rng, self.kernel_size, exposure)
            params = {"trajectory": 1.0, "exposure": exposure}
        else:
            length = min(sample(rng, self.length), self.kernel_size - 2)
            angle = float(rng.uniform(0, 180))
            kernel = linear_kernel(length, angle, self.kernel_size)
            params = {"trajectory": 0.0, "length": length, "angle": angle}
        blurred = convolve_reflect(clean, kernel)
        sigma = sample(rng, self.noise_sigma)
        if sigma > 0:
            blurred = blurred + rng.normal(0, sigma / 255.0, blurred.shape).astype(np.float32)
        params["noise_sigma"] = sigma
        return Degraded(np.clip(blurred, 0, 1), params, {"kernel": kernel})
