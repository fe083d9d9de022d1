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
    #: frames in the file (an animated GIF/WebP/PNG, a multi-page TIFF); only the first is read
    frames: int = 1


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


#: formats whose frames are an animation or pages; not MPO, whose JPEG's further "frames" are a
#: camera's preview or a phone's HDR gain map, with the photo itself first
_MULTI_FRAME = ("GIF", "PNG", "WEBP", "TIFF")


def _png_header(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) of a PNG file, None for anything else."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


#: EXIF orientation (tag 0x0112) -> the array operation that shows the picture upright, as
#: Pillow's ``ImageOps.exif_transpose`` does for 8-bit images
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def _exif_oriented(arr: np.ndarray, path: Path) -> np.ndarray:
    """``arr`` (H, W, C) of ``path`` turned upright by the file's EXIF orientation, if it has one
    (a 16-bit PNG is read without Pillow, so without its ``exif_transpose``)."""
    try:
        with Image.open(path) as im:
            orientation = im.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return arr  # (no readable EXIF: as stored)
    turn = _ORIENT.get(orientation)
    return arr if turn is None else np.ascontiguousarray(turn(arr))


def _load_png16(path: Path) -> LoadedImage:
    """16-bit PNGs through pypng: Pillow would cut RGB to 8 bits."""
    import png

    try:
        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        arr = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(height, width, info["planes"])
    except (png.Error, ValueError) as e:
        raise ImageReadError(f"{path}: not a readable image ({e.__class__.__name__}: {e})") from e
    scaled = _exif_oriented(arr.astype(np.float32) / 65535.0, path)
    grey = info["greyscale"]
    alpha = scaled[..., -1] if info["alpha"] else None
    rgb = np.repeat(scaled[..., :1], 3, axis=2) if grey else scaled[..., :3]
    return LoadedImage(np.ascontiguousarray(rgb), alpha, grey, 16)


def _not_numbers(values: np.ndarray) -> str:
    """What is wrong with float pixels that are NaN or infinite (how many), or "" when none are."""
    bad = int(np.count_nonzero(~np.isfinite(values)))
    return f"{bad} pixel(s) are not numbers (NaN or infinite)" if bad else ""


def load_image(path: str | os.PathLike) -> LoadedImage:
    """Read any common image: EXIF orientation applied, grey replicated to RGB, alpha split off,
    16-bit PNGs kept at full precision."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    header = _png_header(path)
    if header is not None and header[0] == 16:
        return _load_png16(path)
    try:
        with Image.open(path) as im:
            # (of the file: exif_transpose gives a one-frame copy)
            frames = int(getattr(im, "n_frames", 1)) if im.format in _MULTI_FRAME else 1
            im = ImageOps.exif_transpose(im)
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # (a bomb: a header claiming a size far past any photo's - damaged, or made to exhaust memory)
        raise ImageReadError(f"{path}: not a readable image ({e.__class__.__name__}: {e})") from e
    mode = im.mode
    alpha = None
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float32)
        scale = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = arr / scale
        return LoadedImage(np.repeat(grey[..., None], 3, axis=2), None, True, 16 if scale > 255 else 8, frames)
    if mode == "F":
        grey = np.asarray(im, dtype=np.float32)
        bad = _not_numbers(grey)
        if bad:  # (np.clip keeps NaN: it would run through the model and come out black)
            raise ImageReadError(f"{path}: {bad}")
        return LoadedImage(np.repeat(np.clip(grey, 0, 1)[..., None], 3, axis=2), None, True, 16, frames)
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
            return LoadedImage(np.repeat(grey[..., None], 3, axis=2), alpha, True, 8, frames)
    if mode in ("RGBA", "RGBa"):  # by mode, not band name: LAB's bands are L, A, B, and its A is colour
        alpha = np.asarray(im.getchannel("A"), np.float32) / 255.0
    rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return LoadedImage(rgb, alpha, False, 8, frames)


def first_frame_only(path: str | os.PathLike, image: LoadedImage) -> str:
    """The warning for a file of several frames, of which :func:`load_image` read the first ("" for
    one frame): restoring an animation frame by frame is a video job, but silently dropping all
    frames but one would surprise."""
    if image.frames <= 1:
        return ""
    return f"{path} has {image.frames} frames (an animation or a multi-page file); only the first is restored"


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """The RGB content of an image file as float32 (H, W, 3) in [0, 1]."""
    return load_image(path).rgb


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _save_png16(path: Path, rgb: np.ndarray, alpha: np.ndarray | None, grey: bool) -> Path:
    import png

    planes = [rgb.mean(axis=2, keepdims=True) if grey else rgb]
    if alpha is not None:
        planes.append(alpha[..., None])
    arr = (np.clip(np.concatenate(planes, axis=2), 0, 1) * 65535 + 0.5).astype(np.uint16)
    h, w, c = arr.shape
    writer = png.Writer(w, h, greyscale=grey, alpha=alpha is not None, bitdepth=16)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            writer.write(f, arr.reshape(h, w * c))

    return atomic_write(path, write)


def save_image(
    path: str | os.PathLike, rgb: np.ndarray, alpha: np.ndarray | None = None, grey: bool = False, bit_depth: int = 8
) -> Path:
    """Write an image atomically (format from the suffix). Grey output keeps one channel, alpha is
    kept; ``bit_depth=16`` writes a 16-bit PNG."""
    path = Path(path)
    if bit_depth == 16:
        if path.suffix.lower() != ".png":
            raise ValueError(f"{path}: 16-bit output needs a .png file")
        return _save_png16(path, rgb, alpha, grey)
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


# arrays and PIL images: the same layouts as files --------------------------------------------
def from_array(arr: np.ndarray) -> LoadedImage:
    """An image array as the model sees it, remembering its layout.

    (H, W) and (H, W, 1) are grey, (H, W, 2) grey + alpha, (H, W, 3) RGB, (H, W, 4) RGBA; uint8
    and uint16 are scaled from their full range, floats are taken as [0, 1].
    """
    if arr.dtype == np.uint8:
        scaled, depth = arr.astype(np.float32) / 255.0, 8
    elif arr.dtype == np.uint16:
        scaled, depth = arr.astype(np.float32) / 65535.0, 16
    elif arr.dtype.kind == "f":
        scaled, depth = arr.astype(np.float32), 16
        bad = _not_numbers(scaled)
        if bad:  # a NaN passes every comparison blind mode makes, and spreads through the model to every pixel
            raise ValueError(f"the image array: {bad}")
    else:
        raise ValueError(f"expected a uint8, uint16 or float image array, got dtype {arr.dtype}")
    if scaled.ndim == 2:
        scaled = scaled[..., None]
    if scaled.ndim != 3 or scaled.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 1|2|3|4) image array, got shape {arr.shape}")
    c = scaled.shape[2]
    alpha = scaled[..., -1].copy() if c in (2, 4) else None
    if c <= 2:
        return LoadedImage(np.repeat(scaled[..., :1], 3, axis=2), alpha, True, depth)
    return LoadedImage(np.ascontiguousarray(scaled[..., :3]), alpha, False, depth)


def to_array(img: LoadedImage, rgb: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``rgb`` (float32 (H, W, 3)) in the layout and dtype of the array ``like`` that ``img`` came from.

    Integer outputs are rounded exactly as :func:`save_image` rounds them, so an array and a file
    restored from the same pixels hold the same values.
    """
    planes = [rgb.mean(axis=2, keepdims=True) if img.grey else rgb]
    if img.alpha is not None:
        planes.append(img.alpha[..., None])
    out = np.concatenate(planes, axis=2) if len(planes) > 1 else planes[0]
    if like.ndim == 2:
        out = out[..., 0]
    if like.dtype == np.uint8:
        return to_uint8(out)
    if like.dtype == np.uint16:
        return (np.clip(out, 0, 1) * 65535 + 0.5).astype(np.uint16)
    return out.astype(like.dtype)


def _pil_array(im: Image.Image) -> np.ndarray:
    """A PIL image's pixels as an array :func:`from_array` reads (16-bit grey stays 16-bit)."""
    if im.mode.startswith("I;16"):
        return np.asarray(im, dtype=np.uint16)
    if im.mode == "I":
        return np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
    if im.mode == "F":
        return np.asarray(im, dtype=np.float32)
    if im.mode in ("L", "LA", "RGB", "RGBA"):
        return np.asarray(im)
    if im.mode == "1":
        return np.asarray(im.convert("L"))
    return np.asarray(im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB"))


def from_pil(im: Image.Image) -> tuple[LoadedImage, np.ndarray]:
    """A PIL image as the model sees it, and the array layout its result goes back into."""
    arr = _pil_array(im)
    return from_array(arr), arr


def to_pil(img: LoadedImage, rgb: np.ndarray) -> Image.Image:
    """``rgb`` as a PIL image in the source's layout: grey stays grey, alpha is kept; 16-bit grey
    without alpha stays 16-bit (``I;16``), everything else is 8-bit (PIL has no 16-bit RGB)."""
    if img.bit_depth == 16 and img.grey and img.alpha is None:
        like = np.zeros((1, 1), np.uint16)
    else:
        like = np.zeros((1, 1, 3), np.uint8)
        if img.grey:
            like = np.zeros((1, 1), np.uint8) if img.alpha is None else np.zeros((1, 1, 2), np.uint8)
    arr = to_array(img, rgb, like)
    if like.ndim == 3 and like.shape[2] == 3 and img.alpha is not None:
        return Image.fromarray(arr, "RGBA")
    if arr.ndim == 3 and arr.shape[2] == 2:
        return Image.fromarray(arr, "LA")
    return Image.fromarray(arr)
