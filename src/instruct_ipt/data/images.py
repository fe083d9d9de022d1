"""Image files in and out: float32 RGB in [0, 1] inside, what the file was outside."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..io import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(ValueError):
    """A file that is missing, unreadable or not an image; the message names it."""


@dataclass
class LoadedImage:
    rgb: np.ndarray  # float32 (H, W, 3) in [0, 1]
    alpha: np.ndarray | None  # float32 (H, W) in [0, 1], if the file had one
    grey: bool  # the file was single-channel
    bit_depth: int  # 8 or 16


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def load_image(path: str | os.PathLike) -> LoadedImage:
    """Read any common image: EXIF orientation applied, grey replicated to RGB, alpha split off,
    16-bit kept at full precision."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path}: not a readable image ({e.__class__.__name__}: {e})") from e
    mode = im.mode
    alpha = None
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float32)
        scale = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = arr / scale
        return LoadedImage(np.repeat(grey[..., None], 3, axis=2), None, True, 16 if scale > 255 else 8)
    if mode == "F":
        grey = np.asarray(im, dtype=np.float32)
        return LoadedImage(np.repeat(np.clip(grey, 0, 1)[..., None], 3, axis=2), None, True, 16)
    if mode in ("L", "1", "P", "LA", "PA"):
        if mode in ("P", "PA"):
            im = im.convert("RGBA")
            mode = "RGBA"
        elif mode == "LA":
            alpha = np.asarray(im.getchannel("A"), np.float32) / 255.0
            im = im.convert("L")
            mode = "L"
        if mode in ("L", "1"):
            grey = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
            return LoadedImage(np.repeat(grey[..., None], 3, axis=2), alpha, True, 8)
    if mode == "RGBA" or "A" in im.getbands():
        alpha = np.asarray(im.getchannel("A"), np.float32) / 255.0
    rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return LoadedImage(rgb, alpha, False, 8)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """The RGB content of an image file as float32 (H, W, 3) in [0, 1]."""
    return load_image(path).rgb


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_image(path: str | os.PathLike, rgb: np.ndarray, alpha: np.ndarray | None = None, grey: bool = False) -> Path:
    """Write an 8-bit image atomically (format from the suffix). Grey output keeps one channel."""
    path = Path(path)
    if grey:
        y = rgb.mean(axis=2) if rgb.ndim == 3 else rgb
        im = Image.fromarray(to_uint8(y), "L")
        if alpha is not None:
            im.putalpha(Image.fromarray(to_uint8(alpha), "L"))
    else:
        im = Image.fromarray(to_uint8(rgb), "RGB")
        if alpha is not None:
            im.putalpha(Image.fromarray(to_uint8(alpha), "L"))
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image format {path.suffix!r}")
    if fmt == "JPEG" and im.mode in ("RGBA", "LA"):
        im = im.convert("RGB" if im.mode == "RGBA" else "L")
    return atomic_write(path, lambda tmp: im.save(tmp, format=fmt))
