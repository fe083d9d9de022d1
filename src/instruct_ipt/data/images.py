"""Image files in and out: float32 RGB in [0, 1] inside, what the file was outside."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import threading
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..io import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".heic", ".heif", ".hif")
#: HEIF files: left out of a folder where a copy of another format has the same name (below)
HEIF_SUFFIXES = (".heic", ".heif", ".hif")
#: cameras' raw files: sensor data, not a photo yet (several are TIFF inside, whose first image is
#: a small preview that Pillow would read as if it were the photo)
RAW_SUFFIXES = (".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".raf",
                ".pef", ".srw", ".x3f", ".3fr", ".iiq", ".rwl", ".erf", ".kdc", ".dcr", ".mrw", ".mos")


class ImageReadError(ValueError):
    """A file that is missing, unreadable or not an image; the message names it."""


class HeifNeedsExtraError(ImageReadError):
    """A HEIF/HEIC photo where pillow-heif (the ``heif`` extra) is not installed: what to install,
    for a caller to say in its own words (the demo)."""


@dataclass
class LoadedImage:
    rgb: np.ndarray  # float32 (H, W, 3) in [0, 1]
    alpha: np.ndarray | None  # float32 (H, W) in [0, 1], if the file had one
    grey: bool  # the file was single-channel
    bit_depth: int  # 8 or 16
    #: frames in the file (an animated GIF/WebP/PNG, a multi-page TIFF); only the first is read
    frames: int = 1
    #: the file's ICC colour profile where it describes these pixels (RGB, or grey for a grey file):
    #: written into the output, so a Display P3 or Adobe RGB photo keeps its colours in any viewer
    icc: bytes | None = None
    #: the file's EXIF metadata (camera, lens, date, GPS ...), orientation reset as the pixels are
    #: upright already: written into the output, which is the same photo
    exif: bytes | None = None


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def is_raw_file(path: str | os.PathLike) -> bool:
    """A camera's raw file, by its suffix (:data:`RAW_SUFFIXES`)."""
    return Path(path).suffix.lower() in RAW_SUFFIXES


def raw_files(folder: str | os.PathLike) -> list[Path]:
    """The camera raw files directly in ``folder``, sorted by name: what a folder's listing leaves
    out and a caller may say so (a camera's RAW + JPEG pairs, or a folder of raws only)."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_raw_file(p))


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in ``folder``, sorted by name - but not a HEIF file beside a copy of
    another format of the same name (:func:`heif_twins`)."""
    files = image_files(folder)
    twins = set(heif_twins(files))
    return [p for p in files if p not in twins]


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Every image file directly in ``folder`` by its suffix, sorted by name (HEIF twins included)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def heif_twins(files: list[Path]) -> list[Path]:
    """The HEIF files of ``files`` that have a sibling of another format with the same name
    (IMG_0001.HEIC beside IMG_0001.JPG, as a phone's export leaves them): one photo twice, whose
    results would share one output name, and which pillow-heif (an extra) is needed to read."""
    others = {(p.parent, p.stem.casefold()) for p in files if p.suffix.lower() not in HEIF_SUFFIXES}
    return [p for p in files if p.suffix.lower() in HEIF_SUFFIXES and (p.parent, p.stem.casefold()) in others]


#: formats whose frames are an animation or pages; not MPO, whose JPEG's further "frames" are a
#: camera's preview or a phone's HDR gain map, with the photo itself first
_MULTI_FRAME = ("GIF", "PNG", "WEBP", "TIFF")


#: brands of HEIF files coded with HEVC (ISO/IEC 23008-12): still images and sequences - an
#: iPhone's photos, and a camera's .hif
_HEVC_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"})
_heif_opener_registered = False


def _is_heif(head: bytes) -> bool:
    """A file starting with ``head`` is ISO media (``ftyp`` box) whose brands say HEIF: an HEVC brand, or
    the generic HEIF image brands (``mif1``, ``msf1``) without AVIF's (``avif``, ``avis``: Pillow reads those itself)."""
    if head[4:8] != b"ftyp":
        return False
    size = int.from_bytes(head[:4], "big")
    brands = {head[8:12]} | {head[i:i + 4] for i in range(16, min(size, len(head)) - 3, 4)}
    return bool(brands & _HEVC_BRANDS) or (bool(brands & {b"mif1", b"msf1"}) and not brands & {b"avif", b"avis"})


def heif_supported() -> bool:
    """Whether HEIF/HEIC photos can be read and written here: pillow-heif (the ``heif`` extra) is
    installed - and, when it is, Pillow opens them through it from now on (registered once)."""
    global _heif_opener_registered
    try:
        import pillow_heif
    except ImportError:
        return False
    if not _heif_opener_registered:
        pillow_heif.register_heif_opener()  # (8-bit RGB, its transforms applied, ICC and EXIF in info)
        _heif_opener_registered = True
    return True


def _is_tiff(head: bytes) -> bool:
    return head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # (classic and BigTIFF)


def _png_header(head: bytes) -> tuple[int, int, int] | None:
    """(bit depth, width, height) of a PNG file that starts with ``head``, None for anything else."""
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return head[24], width, height


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


def _kept_profile(icc: object, grey: bool) -> bytes | None:
    """``icc`` if it is an ICC profile of the output's colour space (bytes 16-19 of its header:
    ``RGB `` for colour, ``GRAY`` for grey), else None: a CMYK or Lab file's profile would mislabel
    the RGB pixels Pillow converted it to."""
    if not isinstance(icc, bytes) or len(icc) < 128 or icc[36:40] != b"acsp":  # (a 128-byte header, its signature)
        return None
    return icc if icc[16:20] == (b"GRAY" if grey else b"RGB ") else None


#: the first-IFD tags an EXIF block keeps: what describes the photo (description, camera, the
#: orientation reset below, resolution, software, date, artist, copyright) and the pointers to the
#: Exif and GPS sub-IFDs, which go whole. Everything else stays out: a TIFF's getexif() is its whole
#: first IFD, with its storage layout (size, strips, compression), and Photoshop layers, previews,
#: XMP or IPTC blocks that can run to megabytes
_EXIF_TAGS = frozenset({270, 271, 272, 274, 282, 283, 296, 305, 306, 315, 316, 0x4746, 0x4749, 33432, 0x8769, 0x8825,
                        0x9C9B, 0x9C9C, 0x9C9D, 0x9C9E, 0x9C9F})  # (316: host computer; 0x4746-9: rating; 0x9C9x: title ...)


def _exif_bytes(exif: Image.Exif) -> bytes | None:
    """``exif`` (read from the file as opened: ``exif_transpose``'s copy has none) as an EXIF
    block, upright (orientation 1: the pixels were turned when read), with :data:`_EXIF_TAGS` only,
    or None when nothing is left or Pillow cannot write it back (metadata is a courtesy, never a
    failure). Pillow lays the block out again, so a maker note that points by absolute offset may
    not survive."""
    try:
        for tag in [t for t in exif if t not in _EXIF_TAGS]:
            del exif[tag]
        if not len(exif):
            return None
        if 0x0112 in exif:
            exif[0x0112] = 1
        exif.bigtiff = False  # (a BigTIFF's tags: no EXIF reader takes a BigTIFF header)
        return exif.tobytes()
    except Exception:  # noqa: BLE001 - odd camera blocks fail in struct, TypeError, ValueError ...: drop them
        return None


def _metadata(path: Path) -> tuple[int, object, bytes | None]:
    """(EXIF orientation, ICC profile, EXIF block) of a file whose pixels are read without Pillow (a
    16-bit PNG or TIFF), so without its ``exif_transpose``; (1, None, None) when Pillow cannot read them."""
    try:
        with Image.open(path) as im:
            exif = im.getexif()
            orientation = exif.get(0x0112, 1)
            return orientation, im.info.get("icc_profile"), _exif_bytes(exif)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error, Image.DecompressionBombError):
        return 1, None, None  # (no readable metadata: as stored; the pixels' reader checked the size)


def _too_many_pixels(path: Path, pixels: int) -> None:
    """Pillow's decompression-bomb limit, for the readers that decode without Pillow (pypng,
    tifffile): a header claiming over twice ``Image.MAX_IMAGE_PIXELS`` is refused before decoding."""
    if Image.MAX_IMAGE_PIXELS and pixels > 2 * Image.MAX_IMAGE_PIXELS:
        raise ImageReadError(f"{path}: not a readable image (DecompressionBombError: {pixels} pixels, over twice "
                             f"Pillow's limit of {Image.MAX_IMAGE_PIXELS}: damaged, or made to exhaust memory)")


def _load_png16(path: Path, pixels: int) -> LoadedImage:
    """16-bit PNGs (of ``pixels`` by their header) through pypng: Pillow would cut RGB to 8 bits."""
    import png

    _too_many_pixels(path, pixels)

    try:
        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        arr = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(height, width, info["planes"])
    except (png.Error, ValueError) as e:
        raise ImageReadError(f"{path}: not a readable image ({e.__class__.__name__}: {e})") from e
    orientation, icc, exif = _metadata(path)
    scaled = _upright(arr.astype(np.float32) / 65535.0, orientation)
    grey = info["greyscale"]
    alpha = scaled[..., -1] if info["alpha"] else None
    rgb = np.repeat(scaled[..., :1], 3, axis=2) if grey else scaled[..., :3]
    return LoadedImage(np.ascontiguousarray(rgb), alpha, grey, 16, icc=_kept_profile(icc, grey), exif=exif)


def _upright(arr: np.ndarray, orientation: int) -> np.ndarray:
    turn = _ORIENT.get(orientation)
    return arr if turn is None else np.ascontiguousarray(turn(arr))


class _QuietWhileReading(logging.Filter):
    """Drops the ``tifffile`` logger's records while this thread reads a file (:func:`_tifffile_quiet`):
    a flag per thread, so a read never silences another thread's tifffile, and overlapping reads
    cannot leave it silenced (saving and restoring the logger's level could)."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.reading, "depth", 0)


_TIFFFILE_QUIET = _QuietWhileReading()


@contextlib.contextmanager
def _tifffile_quiet():
    """tifffile logs every damaged tag it meets (a line on stderr each, several for one damaged file)
    before this module reports the file on one line, or before Pillow reads it instead: the one line
    is the message, so tifffile is kept quiet while this thread reads."""
    log = logging.getLogger("tifffile")
    if _TIFFFILE_QUIET not in log.filters:
        log.addFilter(_TIFFFILE_QUIET)
    reading = _TIFFFILE_QUIET.reading
    reading.depth = getattr(reading, "depth", 0) + 1
    try:
        yield
    finally:
        reading.depth -= 1


def _load_tiff_deep(path: Path) -> LoadedImage | None:
    """A 16-bit or floating-point colour TIFF (what raw converters and editors export), or grey with
    alpha, through tifffile: Pillow cuts 16-bit RGB to 8 bits and cannot open float RGB or 16-bit
    grey + alpha. None for any other TIFF (8-bit, plain grey, palette, CMYK, ...: Pillow reads those
    in full) and where tifffile cannot decode it (LZW without imagecodecs: Pillow then reads it at 8
    bits, and a warning says so)."""
    import tifffile

    try:
        with _tifffile_quiet(), tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            grey = page.photometric == tifffile.PHOTOMETRIC.MINISBLACK
            if not (page.photometric == tifffile.PHOTOMETRIC.RGB or (grey and page.samplesperpixel >= 2)) \
                    or page.bitspersample not in (16, 32, 64):
                return None
            if page.dtype is None or page.dtype.kind not in "uf" or (page.dtype.kind == "u" and page.bitspersample != 16):
                return None
            _too_many_pixels(path, page.imagewidth * page.imagelength)
            frames, arr = len(tif.pages), page.asarray()
            extras = tuple(page.extrasamples)
            orientation_tag, icc_tag = page.tags.get(274), page.tags.get(34675)
    except ImageReadError:
        raise
    except Exception as e:  # noqa: BLE001 - tifffile's errors share no base (TiffFileError, KeyError, ValueError ...)
        if "imagecodecs" in str(e):
            warnings.warn(f"{path}: read at 8 bits: {e} (pip install imagecodecs reads it at full depth)", stacklevel=3)
        return None  # Pillow's reading, or its clear error
    if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE:
        arr = np.moveaxis(arr, 0, -1)
    colour = 1 if grey else 3  # (samples before the extra ones)
    if arr.ndim != 3 or arr.shape[2] < colour:
        return None
    if arr.dtype.kind == "u":
        scaled = arr.astype(np.float32) / 65535.0
    else:
        scaled = arr.astype(np.float32)
        bad = _not_numbers(scaled)
        if bad:
            raise ImageReadError(f"{path}: {bad}")
        scaled = np.clip(scaled, 0, 1)
    orientation, icc, exif = _metadata(path)
    if orientation_tag is not None and orientation == 1:  # (float TIFFs: Pillow cannot open them)
        orientation = int(orientation_tag.value)
    if icc is None and icc_tag is not None:
        icc = bytes(icc_tag.value)
    scaled = _upright(scaled, orientation)
    rgb, alpha = np.repeat(scaled[..., :1], 3, axis=2) if grey else scaled[..., :3], None
    if arr.shape[2] > colour and extras and int(extras[0]) in (1, 2):  # associated (premultiplied) or unassociated alpha
        alpha = scaled[..., colour]
        if int(extras[0]) == 1:
            rgb = _unpremultiplied(rgb, alpha)
    return LoadedImage(np.ascontiguousarray(rgb), None if alpha is None else np.ascontiguousarray(alpha), grey, 16,
                       frames, _kept_profile(icc, grey), exif)


def _load_heif_deep(path: Path) -> LoadedImage | None:
    """A 10- or 12-bit HEIF photo (an iPhone's HDR photo, a camera's 10-bit .hif) at full depth, as a
    16-bit image: Pillow's plugin opens every HEIF at 8 bits, which bands a sky a restoration then
    cannot smooth again. None for an 8-bit one (Pillow reads it in full) and where pillow-heif
    cannot decode it (Pillow then gives its clear error). The pixels come upright: libheif applies
    the file's rotation and mirroring when it decodes, as Pillow's plugin does."""
    import pillow_heif

    try:
        heif = pillow_heif.open_heif(path, convert_hdr_to_8bit=False)
        bits = int(heif.info.get("bit_depth") or 8)
        if not 8 < bits <= 16:
            return None
        width, height = heif.size
        _too_many_pixels(path, width * height)
        arr = np.asarray(heif)  # uint16, the 10 or 12 bits shifted up to the top of 16
    except ImageReadError:
        raise
    except Exception:  # noqa: BLE001 - pillow-heif's failures share no base (OSError, IndexError, SyntaxError, ...)
        return None
    if arr.ndim == 2:
        arr = arr[..., None]
    grey = heif.mode.startswith(("L", "I"))
    colour = 1 if grey else 3
    if arr.dtype != np.uint16 or arr.shape[2] < colour:
        return None
    scaled = (arr >> (16 - bits)).astype(np.float32) / (2**bits - 1)  # (white: 1023 << 6 is 65472, not 65535)
    rgb, alpha = np.repeat(scaled[..., :1], 3, axis=2) if grey else scaled[..., :3], None
    if arr.shape[2] > colour:
        alpha = scaled[..., colour]
        if heif.premultiplied_alpha:
            rgb = _unpremultiplied(rgb, alpha)
    tags = Image.Exif()  # (the file's own, as read; _exif_bytes resets the orientation: the pixels are upright)
    with contextlib.suppress(Exception):  # (metadata is a courtesy, never a failure)
        tags.load(heif.info.get("exif") or b"")
    return LoadedImage(np.ascontiguousarray(rgb), None if alpha is None else np.ascontiguousarray(alpha), grey, 16,
                       1, _kept_profile(heif.info.get("icc_profile"), grey), _exif_bytes(tags))


def _unpremultiplied(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Colour of a file that stores it multiplied by alpha (associated alpha), divided back: the
    model restores colours, and a transparent pixel has none (0)."""
    return np.clip(rgb / np.maximum(alpha[..., None], 1e-6), 0, 1) * (alpha[..., None] > 0)


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
    if is_raw_file(path):  # (a DNG or NEF would give its preview, a thumbnail, as if it were the photo)
        raise ImageReadError(f"{path}: a camera raw file: develop it to a 16-bit TIFF or PNG first (darktable, "
                             "RawTherapee, the camera maker's software, or rawpy) and restore that; the model "
                             "restores developed photos, not sensor data")
    with open(path, "rb") as f:
        head = f.read(64)  # (what the file is: a 16-bit PNG, a TIFF, HEIF)
    header = _png_header(head)
    if header is not None and header[0] == 16:
        return _load_png16(path, header[1] * header[2])
    if _is_tiff(head):
        deep = _load_tiff_deep(path)
        if deep is not None:
            return deep
    heif = _is_heif(head)
    heif_unreadable = heif and not heif_supported()
    if heif and not heif_unreadable:  # (10 or 12 bits: read at full depth)
        deep = _load_heif_deep(path)
        if deep is not None:
            return deep
    try:
        with Image.open(path) as im:
            # (of the file: exif_transpose gives a one-frame copy)
            frames = int(getattr(im, "n_frames", 1)) if im.format in _MULTI_FRAME else 1
            icc = im.info.get("icc_profile")
            tags = im.getexif()  # (the file's: exif_transpose's copy carries no TIFF tags)
            im = ImageOps.exif_transpose(im)
            im.load()
            exif = _exif_bytes(tags)  # (after the turn, which reads the orientation this resets)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if heif_unreadable and isinstance(e, UnidentifiedImageError):  # (what to install, not "cannot identify")
            raise HeifNeedsExtraError(f"{path}: a HEIF/HEIC photo (an iPhone's or a camera's .hif): reading it needs "
                                 "pillow-heif (pip install 'instruct-ipt[heif]')") from None
        # (a bomb: a header claiming a size far past any photo's - damaged, or made to exhaust memory)
        raise ImageReadError(f"{path}: not a readable image ({e.__class__.__name__}: {e})") from e
    loaded = _decoded(im, path)
    loaded.frames, loaded.icc, loaded.exif = frames, _kept_profile(icc, loaded.grey), exif
    return loaded


def _decoded(im: Image.Image, path: Path) -> LoadedImage:
    """A loaded Pillow image's pixels in the model's layout, by its mode."""
    mode = im.mode
    alpha = None
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float32)
        scale = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = arr / scale
        return LoadedImage(np.repeat(grey[..., None], 3, axis=2), None, True, 16 if scale > 255 else 8)
    if mode == "F":
        grey = np.asarray(im, dtype=np.float32)
        bad = _not_numbers(grey)
        if bad:  # (np.clip keeps NaN: it would run through the model and come out black)
            raise ImageReadError(f"{path}: {bad}")
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
    if mode in ("RGBA", "RGBa"):  # by mode, not band name: LAB's bands are L, A, B, and its A is colour
        alpha = np.asarray(im.getchannel("A"), np.float32) / 255.0
    rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return LoadedImage(rgb, alpha, False, 8)


def first_frame_only(path: str | os.PathLike, image: LoadedImage) -> str:
    """The warning for a file of several frames, of which :func:`load_image` read the first ("" for
    one frame, so a caller warns when there is one): restoring an animation frame by frame is a
    video job, but silently dropping all frames but one would surprise."""
    if image.frames <= 1:
        return ""
    return f"{path} has {image.frames} frames (an animation or a multi-page file); only the first is restored"


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """The RGB content of an image file as float32 (H, W, 3) in [0, 1]."""
    return load_image(path).rgb


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC (pypng, which writes the 16-bit files, has no option
    for a colour profile or EXIF)."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _uint16_planes(rgb: np.ndarray, alpha: np.ndarray | None, grey: bool) -> np.ndarray:
    """(H, W, C) uint16 samples of a 16-bit file: grey or RGB, then alpha."""
    planes = [rgb.mean(axis=2, keepdims=True) if grey else rgb]
    if alpha is not None:
        planes.append(alpha[..., None])
    return (np.clip(np.concatenate(planes, axis=2), 0, 1) * 65535 + 0.5).astype(np.uint16)


def _save_png16(path: Path, rgb: np.ndarray, alpha: np.ndarray | None, grey: bool, icc: bytes | None = None,
                exif: bytes | None = None) -> Path:
    import png

    arr = _uint16_planes(rgb, alpha, grey)
    h, w, c = arr.shape
    writer = png.Writer(w, h, greyscale=grey, alpha=alpha is not None, bitdepth=16)

    def write(tmp: str) -> None:
        buf = io.BytesIO()
        writer.write(buf, arr.reshape(h, w * c))
        data = buf.getvalue()
        extra = b""  # before the image data, as the PNG spec asks: right after the signature and IHDR
        if icc is not None:  # iCCP: a name, a zero byte, method 0 (zlib), the deflated profile
            extra += _png_chunk(b"iCCP", b"icc\0\0" + zlib.compress(icc))
        if exif is not None:  # eXIf: the TIFF block, without JPEG's "Exif\0\0" marker
            extra += _png_chunk(b"eXIf", exif.removeprefix(b"Exif\0\0"))
        data = data[:33] + extra + data[33:]
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write)


_TIFF_TEXT_TAGS = (271, 272, 306, 315, 316, 33432)  # make, model, date, artist, host computer, copyright


def _tiff_text_tags(exif: bytes | None) -> tuple[dict[str, str], list[tuple[int, str, int, str, bool]]]:
    """The plain text tags of an EXIF block's first IFD - camera make and model, date, artist,
    copyright, description, software - as tifffile's imwrite arguments and extra tags: what a 16-bit
    TIFF can carry of a photo's EXIF, since tifffile writes no EXIF or GPS sub-IFD (exposure, lens
    and GPS are left out). ASCII only (a TIFF's text type); a value that is not is left out."""
    if exif is None:
        return {}, []
    tags = Image.Exif()
    try:
        tags.load(exif)
    except Exception:  # noqa: BLE001 - metadata is a courtesy, never a failure
        return {}, []

    def text(tag: int) -> str | None:
        value = tags.get(tag)
        if not isinstance(value, str):
            return None
        value = value.rstrip("\0")
        return value if value and value.isascii() else None

    # (description and software: imwrite's own arguments; the date as a plain tag, since imwrite's
    # datetime argument refuses anything but "YYYY:MM:DD HH:MM:SS", and a camera's may differ)
    named = {k: v for k, v in (("description", text(270)), ("software", text(305))) if v is not None}
    extra = [(tag, "s", 0, v, True) for tag in _TIFF_TEXT_TAGS if (v := text(tag)) is not None]
    return named, extra


def _save_tiff16(path: Path, rgb: np.ndarray, alpha: np.ndarray | None, grey: bool, icc: bytes | None,
                 exif: bytes | None = None) -> Path:
    """A 16-bit TIFF through tifffile (Pillow writes no 16-bit colour), deflate-compressed, with the
    colour profile and the EXIF block's text tags (:func:`_tiff_text_tags`: camera, date, artist,
    copyright; tifffile writes no EXIF sub-IFD, so exposure, lens and GPS are left out)."""
    import tifffile

    arr = _uint16_planes(rgb, alpha, grey)
    if arr.shape[2] == 1:
        arr = arr[..., 0]
    named, extra = _tiff_text_tags(exif)

    def write(tmp: str) -> None:
        tifffile.imwrite(tmp, arr, photometric="minisblack" if grey else "rgb", compression="zlib",
                         extrasamples=["unassalpha"] if alpha is not None else None, iccprofile=icc,
                         metadata=None, extratags=extra, **({"software": False} | named))

    return atomic_write(path, write)


#: the longest side a HEIC is written with: the HEVC encoder (x265) refuses more (a phone's panorama can have more)
HEIF_MAX_SIDE = 16384


def heif_too_large(shape: tuple[int, ...]) -> str:
    """Why an image of ``shape`` (H, W, ...) cannot be written as HEIC, or "" when it can."""
    if max(shape[:2]) <= HEIF_MAX_SIDE:
        return ""
    return (f"{shape[1]}x{shape[0]} is too large for HEIC (the HEVC encoder takes at most {HEIF_MAX_SIDE} px a side): "
            "write it as png or tif")


def _save_heif16(path: Path, rgb: np.ndarray, alpha: np.ndarray | None, grey: bool, icc: bytes | None,
                 exif: bytes | None) -> Path:
    """A 10-bit HEIC of a 16-bit image through pillow-heif (which writes 16-bit samples as 10 bits,
    what an iPhone's HDR photo holds): the depth kept in a file about a ninth of a 16-bit PNG's (a
    768 x 480 photo: 0.23 against 2.09 MB); quality 95, with the colour profile and EXIF. Grey with
    alpha is written as RGBA (HEIF has no grey + alpha at this depth)."""
    import pillow_heif

    arr = _uint16_planes(rgb, alpha, grey and alpha is None)
    mode = {1: "L;16", 3: "RGB;16", 4: "RGBA;16"}[arr.shape[2]]
    heif = pillow_heif.from_bytes(mode=mode, size=(arr.shape[1], arr.shape[0]), data=np.ascontiguousarray(arr).tobytes())
    extra = {k: v for k, v in (("icc_profile", icc), ("exif", exif)) if v is not None}
    try:
        return atomic_write(path, lambda tmp: heif.save(tmp, quality=95, **extra))
    except RuntimeError as e:  # (the HEVC encoder's refusals: one image's error, not the batch's end)
        raise ValueError(f"{path}: the encoder refused it ({e})") from e


def save_image(
    path: str | os.PathLike, rgb: np.ndarray, alpha: np.ndarray | None = None, grey: bool = False, bit_depth: int = 8,
    icc: bytes | None = None, exif: bytes | None = None,
) -> Path:
    """Write an image atomically (format from the suffix). Grey output keeps one channel, alpha is
    kept; ``bit_depth=16`` writes a 16-bit PNG or TIFF, or a 10-bit HEIC (:func:`_save_heif16`; other
    formats are 8-bit only); ``icc`` (a colour profile) and ``exif`` (a metadata block) are embedded
    (PNG, JPEG, TIFF, WebP, HEIC; of EXIF, a 16-bit TIFF keeps the text tags only:
    :func:`_tiff_text_tags`). JPEG, WebP and HEIC are written at quality 95; HEIC needs pillow-heif."""
    path = Path(path)
    if path.suffix.lower() in HEIF_SUFFIXES:
        if not heif_supported():
            raise ValueError(f"{path}: writing HEIC needs pillow-heif (pip install 'instruct-ipt[heif]')")
        too_large = heif_too_large(rgb.shape)
        if too_large:
            raise ValueError(f"{path}: {too_large}")
        if grey and alpha is not None:  # (written as RGBA: a grey profile would not fit it)
            icc = None
        if bit_depth == 16:
            return _save_heif16(path, rgb, alpha, grey, icc, exif)
    if bit_depth == 16 and path.suffix.lower() in (".tif", ".tiff"):
        return _save_tiff16(path, rgb, alpha, grey, icc, exif)
    if bit_depth == 16 and path.suffix.lower() == ".png":
        return _save_png16(path, rgb, alpha, grey, icc, exif)
    # (16 bits to a format that has only 8 - JPEG, WebP, BMP: 8 bits, as asked by the suffix)
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
    if fmt == "JPEG" and exif is not None and len(exif) > 65533:  # (one JPEG marker segment's room)
        warnings.warn(f"{path}: the EXIF block ({len(exif)} bytes) is left out: a JPEG holds at most 65533", stacklevel=2)
        exif = None
    extra = {k: v for k, v in (("icc_profile", icc), ("exif", exif)) if v is not None}
    if fmt in ("JPEG", "WEBP", "HEIF"):  # (Pillow's default 75 would add the artefacts a restoration removed)
        extra |= {"quality": 95} | ({"subsampling": 0} if fmt == "JPEG" else {})
    try:
        return atomic_write(path, lambda tmp: im.save(tmp, format=fmt, **extra))
    except RuntimeError as e:  # (the HEVC encoder's refusals: one image's error, not the batch's end)
        raise ValueError(f"{path}: the encoder refused it ({e})") from e


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
    """A PIL image as the model sees it (with its colour profile), and the array layout its result goes back into."""
    arr = _pil_array(im)
    loaded = from_array(arr)
    loaded.icc = _kept_profile(im.info.get("icc_profile"), loaded.grey)
    return loaded, arr


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
        out = Image.fromarray(arr, "RGBA")
    elif arr.ndim == 3 and arr.shape[2] == 2:
        out = Image.fromarray(arr, "LA")
    else:
        out = Image.fromarray(arr)
    if img.icc is not None:
        out.info["icc_profile"] = img.icc  # (Pillow's save embeds it: PNG, JPEG, TIFF, WebP)
    return out
