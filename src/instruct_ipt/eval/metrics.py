"""PSNR and SSIM exactly as the restoration literature computes them.

* Images are float arrays ``(H, W, 3)`` (RGB) or ``(H, W)`` in [0, 1].
* ``y_channel=True`` converts to MATLAB's BT.601 luma, ``Y = 16 + 65.481 R + 128.553 G + 24.966 B``
  on [0, 1] RGB (range 16-235, *not* OpenCV's full-range JPEG YCrCb), and measures it on the
  0-255 scale, as MATLAB's ``rgb2ycbcr`` on ``im2double`` input does.
* SSIM follows Wang et al. (2004): 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
  statistics over the *valid* region only (MATLAB ``filter2(..., 'valid')``), averaged over
  channels for RGB. This equals scikit-image's ``structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False)``.
* ``crop_border`` drops that many pixels on every side first (super-resolution style protocols).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import correlate1d


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2ycbcr`` luma of a [0, 1] RGB image, on the 0-255 scale (16-235)."""
    img = np.asarray(img, dtype=np.float64)
    return 16.0 + img[..., 0] * 65.481 + img[..., 1] * 128.553 + img[..., 2] * 24.966


def _prepare(pred: np.ndarray, target: np.ndarray, crop_border: int, y_channel: bool) -> tuple[np.ndarray, np.ndarray, float]:
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"size mismatch: prediction {pred.shape} vs target {target.shape}")
    if crop_border:
        pred = pred[crop_border:-crop_border, crop_border:-crop_border, ...]
        target = target[crop_border:-crop_border, crop_border:-crop_border, ...]
    if y_channel:
        if pred.ndim != 3 or pred.shape[2] != 3:
            raise ValueError("the Y channel needs RGB images")
        return rgb_to_y(pred), rgb_to_y(target), 255.0
    return pred, target, 1.0


def psnr(pred: np.ndarray, target: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    """Peak signal-to-noise ratio in dB (``inf`` for identical images)."""
    p, t, peak = _prepare(pred, target, crop_border, y_channel)
    mse = np.mean((p - t) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(peak**2 / mse))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1-D Gaussian; the 2-D window is its outer product (MATLAB ``fspecial``)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    r = len(g) // 2
    out = correlate1d(correlate1d(img, g, axis=0, mode="constant"), g, axis=1, mode="constant")
    return out[r:-r, r:-r]


def _ssim_map(x: np.ndarray, y: np.ndarray, peak: float, g: np.ndarray) -> np.ndarray:
    """The SSIM of every full window (the map is ``len(g) - 1`` smaller than the image)."""
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mu_x, mu_y = _filter_valid(x, g), _filter_valid(y, g)
    sxx = _filter_valid(x * x, g) - mu_x**2
    syy = _filter_valid(y * y, g) - mu_y**2
    sxy = _filter_valid(x * y, g) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))


def _ssim_map_mean(x: np.ndarray, y: np.ndarray, peak: float, g: np.ndarray) -> float:
    return float(_ssim_map(x, y, peak, g).mean())


def ssim(pred: np.ndarray, target: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    """Structural similarity (mean over the valid region, and over channels for RGB)."""
    p, t, peak = _prepare(pred, target, crop_border, y_channel)
    if min(p.shape[:2]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels, got {p.shape[:2]}")
    g = gaussian_window()
    if p.ndim == 2:
        return _ssim_map_mean(p, t, peak, g)
    return float(np.mean([_ssim_map_mean(p[..., c], t[..., c], peak, g) for c in range(p.shape[2])]))


def seam_ratio(pred: np.ndarray, target: np.ndarray, period: int) -> float:
    """Block seams: how much more the error jumps across every ``period``-th pixel line than across
    the others (1: no seams; a model that processes ``period``-pixel blocks apart shows more).

    The error ``pred - target`` (averaged over channels) is differenced between neighbouring
    pixels, across columns and across rows; the mean squared jump across the lines between pixel
    ``k * period - 1`` and ``k * period`` is divided by the mean squared jump across all other lines.
    Images without such a line (smaller than ``period + 1`` both ways) give NaN.
    """
    if period < 2:
        raise ValueError(f"seam period must be >= 2, got {period}")
    e = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
    if e.ndim == 3:
        e = e.mean(axis=2)
    h, w = e.shape
    dx, dy = np.diff(e, axis=1) ** 2, np.diff(e, axis=0) ** 2
    cols, rows = np.arange(1, w) % period == 0, np.arange(1, h) % period == 0
    seams = np.concatenate([dx[:, cols].ravel(), dy[rows].ravel()])
    rest = np.concatenate([dx[:, ~cols].ravel(), dy[~rows].ravel()])
    if seams.size == 0 or rest.size == 0 or rest.mean() == 0:
        return float("nan")
    return float(seams.mean() / rest.mean())


def masked_psnr(pred: np.ndarray, target: np.ndarray, region: np.ndarray) -> float:
    """PSNR over the pixels where ``region`` (H, W) is true (all channels), images in [0, 1]: the
    inside or the outside of an inpainting mask."""
    region = np.asarray(region, bool)
    if not region.any():
        raise ValueError("the region is empty")
    mse = float(np.mean((np.asarray(pred, np.float64)[region] - np.asarray(target, np.float64)[region]) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))


def masked_ssim(pred: np.ndarray, target: np.ndarray, region: np.ndarray) -> float:
    """SSIM averaged over the windows centred on ``region`` (mean over channels), images in [0, 1].

    The images are reflected by half a window at their borders so that every pixel has a window
    (an outpainting band is often thinner than half a window). Windows near the region's edge see
    pixels of the other side: SSIM has no purely local form, and this is the usual compromise."""
    g = gaussian_window()
    r = len(g) // 2
    region = np.asarray(region, bool)
    if not region.any():
        raise ValueError("the region is empty")
    if min(region.shape) <= r:
        raise ValueError(f"SSIM needs images larger than {r}x{r} pixels, got {region.shape}")
    p, t = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if p.ndim == 2:
        p, t = p[..., None], t[..., None]
    pad = ((r, r), (r, r), (0, 0))
    p, t = np.pad(p, pad, mode="reflect"), np.pad(t, pad, mode="reflect")
    return float(np.mean([_ssim_map(p[..., c], t[..., c], 1.0, g)[region].mean() for c in range(p.shape[2])]))
