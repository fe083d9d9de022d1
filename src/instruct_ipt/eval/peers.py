"""Classical baselines computed on the same images, for context in result tables.

Each peer is ``fn(degraded, info) -> restored`` on float32 (H, W, 3) images in [0, 1];
``info`` carries what the benchmark knows (e.g. the noise ``sigma`` on the 0-255 scale, which
BM3D and NLM are given as an oracle, as in published comparisons). Optional packages
(``bm3d``, ``opencv-python-headless``: ``pip install "instruct-ipt[peers]"``) are imported
only when a peer runs; a missing one is reported and skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import minimum_filter, uniform_filter

PeerFn = Callable[[np.ndarray, dict], np.ndarray]


class PeerUnavailable(RuntimeError):
    """A peer whose optional package is not installed."""


def identity(degraded: np.ndarray, info: dict) -> np.ndarray:
    """The degraded input itself: the floor every method must beat."""
    return degraded


def _sigma(info: dict) -> float:
    if info.get("sigma") is None:
        raise PeerUnavailable("needs the noise level (sigma) of the benchmark")
    return float(info["sigma"])


def bm3d_peer(degraded: np.ndarray, info: dict) -> np.ndarray:
    """BM3D (Dabov et al.) given the true noise sigma: colour BM3D, or grey BM3D for grey images."""
    try:
        import bm3d
    except ImportError as e:
        raise PeerUnavailable("package 'bm3d' is not installed (pip install \"instruct-ipt[peers]\")") from e
    if info.get("grey"):  # a grey image: grey BM3D on its one channel, not colour BM3D on three copies
        out = bm3d.bm3d(degraded[..., 0].astype(np.float64), _sigma(info) / 255.0)
        return np.repeat(np.asarray(out, dtype=np.float32)[..., None], 3, axis=2)
    return np.asarray(bm3d.bm3d_rgb(degraded.astype(np.float64), _sigma(info) / 255.0), dtype=np.float32)


def nlm_peer(degraded: np.ndarray, info: dict) -> np.ndarray:
    """OpenCV's fast non-local means (h = hColor = 0.8 sigma, 7x7 patches, 21x21 search); its grey variant for grey images."""
    try:
        import cv2
    except ImportError as e:
        raise PeerUnavailable("package 'opencv-python-headless' is not installed (pip install \"instruct-ipt[peers]\")") from e
    h = 0.8 * _sigma(info)
    u8 = (np.clip(degraded, 0, 1) * 255 + 0.5).astype(np.uint8)
    if info.get("grey"):
        out = cv2.fastNlMeansDenoising(np.ascontiguousarray(u8[..., 0]), None, h, 7, 21)
        return np.repeat(out[..., None], 3, axis=2).astype(np.float32) / 255.0
    out = cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(u8[..., ::-1]), None, h, h, 7, 21)
    return out[..., ::-1].astype(np.float32) / 255.0


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter with a grey guide (box filters of side 2 * radius + 1)."""
    size = 2 * radius + 1

    def box(x: np.ndarray) -> np.ndarray:
        return uniform_filter(x, size=size, mode="reflect")

    mean_i, mean_p = box(guide), box(src)
    cov_ip = box(guide * src) - mean_i * mean_p
    var_i = box(guide * guide) - mean_i**2
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return box(a) * guide + box(b)


def dark_channel_prior(
    degraded: np.ndarray, info: dict, patch: int = 15, omega: float = 0.95, t0: float = 0.1
) -> np.ndarray:
    """Dark channel prior dehazing (He, Sun & Tang 2009) with guided-filter refinement.

    Airlight: the brightest input pixel among the 0.1% haziest dark-channel pixels; transmission
    ``1 - omega * dark(I / A)``, refined by a guided filter (radius 60 scaled to the image,
    eps 1e-3) and floored at ``t0``; ``J = (I - A) / t + A``.
    """
    img = np.clip(degraded.astype(np.float64), 0, 1)
    h, w = img.shape[:2]
    dark = minimum_filter(img.min(axis=2), size=patch, mode="nearest")
    n = max(1, int(h * w * 0.001))
    idx = np.argpartition(dark.ravel(), -n)[-n:]
    candidates = img.reshape(-1, 3)[idx]
    airlight = candidates[np.argmax(candidates.sum(axis=1))]
    airlight = np.maximum(airlight, 1e-3)
    t = 1 - omega * minimum_filter((img / airlight).min(axis=2), size=patch, mode="nearest")
    grey = img @ np.array([0.299, 0.587, 0.114])
    radius = max(4, round(60 * min(h, w) / 600))
    t = np.clip(guided_filter(grey, t, radius, 1e-3), t0, 1)
    return np.clip((img - airlight) / t[..., None] + airlight, 0, 1).astype(np.float32)


@dataclass(frozen=True)
class Peer:
    name: str
    fn: PeerFn


#: the peers shown for each task (identity everywhere)
PEERS: dict[str, tuple[Peer, ...]] = {
    "denoise": (Peer("input", identity), Peer("bm3d", bm3d_peer), Peer("opencv-nlm", nlm_peer)),
    "dehaze": (Peer("input", identity), Peer("dark-channel-prior", dark_channel_prior)),
}


def peers_for(task: str) -> tuple[Peer, ...]:
    return PEERS.get(task, (Peer("input", identity),))
