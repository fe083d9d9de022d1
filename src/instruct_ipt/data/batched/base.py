"""What every batched (torch, on-device) degradation shares: the protocol and exact helpers.

Each helper reproduces a NumPy/SciPy primitive of ``degradations`` up to float32 rounding
(``convolve_reflect``, ``scipy.ndimage.gaussian_filter``), so a batched operator given the same
draws and random fields makes the image the NumPy operator makes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..degradations.base import Degradation, Range, degradation_margin


class BatchedDegradation(Protocol):
    """A NumPy operator split in two: cheap per-sample draws in the worker, pixels on the device."""

    op: Degradation  # the NumPy operator whose distribution it reproduces
    margin: int  # degradation_margin(op): context px on each side

    def draw(self, clean: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Worker side: this sample's parameters and small kernels, each of a shape fixed by the
        operator's config (so samples of one task stack). ``clean`` is the float32 (H, W, 3) crop
        including the margin."""
        ...

    def apply(self, clean: torch.Tensor, draws: dict[str, torch.Tensor], seeds: torch.Tensor) -> torch.Tensor:
        """Device side: degrade ``clean`` (n, 3, H, W) in [0, 1] with the stacked ``draws`` (n, ...);
        random fields come from a generator re-seeded per sample with ``seeds[i]`` (int64, CPU)."""
        ...


class Wrapper:
    """Holds the NumPy operator (its ranges are read from it, never copied) and its margin."""

    def __init__(self, op: Degradation) -> None:
        self.op = op
        self.margin = degradation_margin(op)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.op!r})"


def upper(r: Range) -> float:
    """The largest value a range can draw: sizes kernels so every sample of a task stacks."""
    return float(r[1]) if isinstance(r, (tuple, list)) else float(r)


def scalar(x: float) -> np.ndarray:
    """A drawn parameter as a 0-d float32 array (stacks to (n,))."""
    return np.asarray(x, dtype=np.float32)


def per_sample(v: torch.Tensor) -> torch.Tensor:
    """(n,) -> (n, 1, 1, 1), to scale (n, c, H, W)."""
    return v.reshape(-1, 1, 1, 1)


def reseeded(seeds: torch.Tensor, device: torch.device) -> Iterator[torch.Generator]:
    """One generator on ``device``, re-seeded for each sample in turn: a sample's random fields
    depend on its own seed only, never on which batch it lands in or where."""
    g = torch.Generator(device=device)
    for s in seeds.tolist():
        yield g.manual_seed(s)


def centre_pad(k: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad an odd square kernel, centred, to odd ``size``: the same convolution, but stackable."""
    p = (size - k.shape[0]) // 2
    if p < 0 or k.shape[0] % 2 == 0 or size % 2 == 0:
        raise ValueError(f"cannot centre a {k.shape} kernel in {size} x {size}")
    return np.pad(k, p).astype(np.float32)


def gaussian_kernel1d(sigma: float, radius: int | None = None) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter``'s 1-D weights (truncate 4: radius ``int(4 sigma + 0.5)``),
    zero-padded to ``radius`` when given (so kernels of different sigmas stack)."""
    r = int(4.0 * sigma + 0.5)
    x = np.arange(-r, r + 1)
    phi = np.exp(-0.5 / sigma**2 * x**2)
    k = (phi / phi.sum()).astype(np.float32)
    return k if radius is None else np.pad(k, radius - r)


def _fold(n: int, p: int, device: torch.device) -> torch.Tensor:
    i = torch.arange(-p, n + p, device=device) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


def pad_symmetric(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """numpy 'symmetric' padding (edge pixel repeated; scipy.ndimage's 'reflect') of the last two
    dims, any width (wider than the image folds again, as numpy and scipy do)."""
    return x[..., _fold(x.shape[-2], ph, x.device), :][..., _fold(x.shape[-1], pw, x.device)]


def pad_reflect(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """numpy 'reflect' padding (edge not repeated), falling back to 'symmetric' for an image too
    small for it, exactly as :func:`~instruct_ipt.data.degradations.convolve_reflect` does."""
    if min(x.shape[-2:]) > max(ph, pw):
        return F.pad(x, (pw, pw, ph, ph), mode="reflect")
    return pad_symmetric(x, ph, pw)


def convolve_reflect(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """``degradations.convolve_reflect`` for a batch: x (n, c, H, W), one odd square kernel per map,
    ``kernels`` broadcastable to (n, c, k, k). A true convolution (conv2d correlates: the kernels
    are flipped), as ONE grouped conv2d."""
    n, c, h, w = x.shape
    k = kernels.shape[-1]
    padded = pad_reflect(x, k // 2, k // 2).reshape(1, n * c, h + k - 1, w + k - 1)
    weight = kernels.flip(-2, -1).expand(n, c, k, k).reshape(n * c, 1, k, k)
    return F.conv2d(padded, weight, groups=n * c).reshape(n, c, h, w)


def gaussian_filter(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter`` (mode 'reflect', i.e. numpy 'symmetric') of each map of
    x (n, c, H, W) with its 1-D weights, ``kernels`` broadcastable to (n, c, 2r+1): separable,
    along H then W, as two grouped convolutions."""
    n, c, h, w = x.shape
    k = kernels.shape[-1]
    r = k // 2
    weight = kernels.expand(n, c, k).reshape(n * c, 1, k)
    padded = pad_symmetric(x, r, r).reshape(1, n * c, h + 2 * r, w + 2 * r)
    y = F.conv2d(padded, weight[..., None], groups=n * c)  # the weights are symmetric: no flip
    return F.conv2d(y, weight[:, :, None, :], groups=n * c).reshape(n, c, h, w)
