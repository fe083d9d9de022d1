"""What every degradation operator shares: sampled parameters, the result type, image checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

#: a fixed value, or a (low, high) range sampled uniformly per image
Range = float | tuple[float, float]


def sample(rng: np.random.Generator, r: Range) -> float:
    if isinstance(r, (tuple, list)):
        lo, hi = r
        if hi < lo:
            raise ValueError(f"range {r} has high < low")
        return float(rng.uniform(lo, hi)) if hi > lo else float(lo)
    return float(r)


def check_range(owner: str, name: str, r: object, low: float | None = None, high: float | None = None,
                above: bool = False, one: bool = False) -> None:
    """Refuse a parameter that is not a :data:`Range` (one number with ``one``) within ``[low, high]``
    (``(low, high]`` with ``above``), naming it: a negative sigma or an opacity of 2 would otherwise pass silently on one
    path (the device's noise flips sign) and stop another deep in a DataLoader worker."""
    pair = isinstance(r, (tuple, list))
    values = list(r) if pair else [r]
    what = f"{owner}.{name}"
    numbers = all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values)
    if (pair and (one or len(values) != 2)) or not numbers:
        raise ValueError(f"{what}: {'one number' if one else 'a number or a [low, high] pair of numbers'}, got {r!r}")
    if not all(np.isfinite(v) for v in values):
        raise ValueError(f"{what}: must be finite, got {r!r}")
    if len(values) == 2 and values[1] < values[0]:
        raise ValueError(f"{what}: range {r!r} has high < low")
    if low is not None and (min(values) <= low if above else min(values) < low):
        raise ValueError(f"{what}: must be {'>' if above else '>='} {low:g}, got {r!r}")
    if high is not None and max(values) > high:
        raise ValueError(f"{what}: must be <= {high:g}, got {r!r}")


@dataclass
class Degraded:
    """A degraded image with what was sampled to make it."""

    image: np.ndarray  # float32 (H, W, 3)
    params: dict[str, float] = field(default_factory=dict)
    #: auxiliary maps: blur kernel, rain streaks, snow mask, transmission ...
    extras: dict[str, np.ndarray] = field(default_factory=dict)


class Degradation(Protocol):
    """``op(clean, rng)`` degrades a float32 (H, W, 3) image in [0, 1].

    An operator whose output pixel depends on its neighbours (a blur) may also say how far, as an
    ``int`` attribute ``margin``: training crops then take that much real context on each side,
    degrade, and keep the centre, so patches are not degraded against padding (see
    :func:`degradation_margin`).
    """

    task: str

    def __call__(self, clean: np.ndarray, rng: np.random.Generator) -> Degraded: ...


def degradation_margin(op: object) -> int:
    """An operator's ``margin`` (0 when it has none): context to degrade a crop as a whole photo would be."""
    margin = int(getattr(op, "margin", 0))
    if margin < 0:
        raise ValueError(f"{type(op).__name__}.margin must be >= 0, got {margin}")
    return margin


def check_image(img: np.ndarray) -> np.ndarray:
    """Validate a clean image: float (H, W, 3) in [0, 1]; returns it as float32."""
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected a float (H, W, 3) image in [0, 1], got {getattr(img, 'shape', type(img))}")
    if img.dtype.kind != "f":
        raise ValueError(f"expected a float image in [0, 1], got dtype {img.dtype} (divide uint8 by 255)")
    return img.astype(np.float32, copy=False)


def convolve_reflect(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """2-D convolution of each channel (or a 2-D map) with reflect boundaries, via FFT."""
    kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    pad = ((ph, kh - 1 - ph), (pw, kw - 1 - pw)) + ((0, 0),) * (img.ndim - 2)
    mode = "reflect" if min(img.shape[:2]) > max(ph, pw) else "symmetric"
    padded = np.pad(img, pad, mode=mode)
    k = kernel if img.ndim == 2 else kernel[..., None]
    from scipy.signal import (
        fftconvolve,  # here: scipy.signal is slow to import (1.1 s on 2 busy cores) and most commands never blur
    )

    return fftconvolve(padded, k, mode="valid", axes=(0, 1)).astype(np.float32)


def splat(points: np.ndarray, size: int) -> np.ndarray:
    """Rasterise sub-pixel points (N, 2) as (x, y), centred on the kernel, with bilinear weights.

    The point cloud is shifted so its centroid sits at the kernel centre: a blur made from it
    does not move the image, so degraded and clean stay aligned.
    """
    pts = points - points.mean(axis=0) + (size - 1) / 2
    pts = np.clip(pts, 0, size - 1 - 1e-6)
    x0 = np.floor(pts[:, 0]).astype(int)
    y0 = np.floor(pts[:, 1]).astype(int)
    fx, fy = pts[:, 0] - x0, pts[:, 1] - y0
    k = np.zeros((size, size), dtype=np.float64)
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(k, (np.minimum(y0 + dy, size - 1), np.minimum(x0 + dx, size - 1)), w)
    return (k / k.sum()).astype(np.float32)


def line_points(length: float, angle_deg: float) -> np.ndarray:
    """Dense points on a segment of ``length`` px at ``angle_deg`` (0 = horizontal)."""
    n = max(2, int(np.ceil(length * 4)))
    s = np.linspace(-length / 2, length / 2, n)
    a = np.deg2rad(angle_deg)
    return np.stack([s * np.cos(a), s * np.sin(a)], axis=1)


def as_grey(img: np.ndarray) -> np.ndarray:
    """The grey photo of ``img`` as a grey file reads: BT.601 luma (as Pillow's ``convert("L")``,
    rounded to 8-bit levels) in all three channels. uint8 in, uint8 out; float in [0, 1] in, float32 out."""
    rgb = img[..., :3].astype(np.float64)
    if img.dtype == np.uint8:
        luma = np.floor(rgb @ np.array([299.0, 587.0, 114.0]) / 1000 + 0.5).astype(np.uint8)
    else:
        luma = (np.round(np.clip(rgb @ np.array([0.299, 0.587, 0.114]), 0, 1) * 255) / 255).astype(np.float32)
    return np.repeat(luma[..., None], 3, axis=2)


def grey_degraded(degraded: np.ndarray) -> np.ndarray:
    """A degraded grey image with the same degradation in every channel (channel 0 copied): a grey
    photo's noise, JPEG artefacts or streaks are one image, not three independent ones."""
    return np.repeat(degraded[..., :1], 3, axis=2)
