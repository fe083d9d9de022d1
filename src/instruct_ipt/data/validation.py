"""A fixed validation set: degraded once from clean photos with fixed seeds, cached on disk.

Validation numbers are comparable between runs only if every run sees the same degraded images;
regenerating them on the fly would tie them to library versions and RNG call order. The cache
holds float32 ``.npz`` pairs (inputs are not rounded, so noise stays float) and a manifest; it is
rebuilt only when the sources (their names and contents), crop, seed or degradation parameters change.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import NPZ_READ_ERRORS, atomic_write, atomic_write_text
from .degradations import Degradation
from .images import list_images, read_rgb, save_image

MANIFEST = "manifest.json"


@dataclass
class ValidationItem:
    task: str
    name: str
    input: np.ndarray  # float32 (H, W, 3)
    target: np.ndarray


def center_crop(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """The centre ``size`` x ``size`` square of ``img``, or ``(height, width)`` rectangle; a side longer
    than the image's keeps the image's; ``size`` 0 (or less): the whole image."""
    s_h, s_w = size if isinstance(size, tuple) else (size, size)
    if s_h <= 0 or s_w <= 0:
        return img
    h, w = img.shape[:2]
    s_h, s_w = min(s_h, h), min(s_w, w)
    top, left = (h - s_h) // 2, (w - s_w) // 2
    return img[top : top + s_h, left : left + s_w]


def tiles(img: np.ndarray, size: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """The non-overlapping ``size`` squares of ``img`` as ``(top, left, tile)``, row by row from the
    top-left corner (a remainder narrower than ``size`` is left out).

    More test images from few photos: the four validation photos (768 px wide, 432-576 px high)
    give 36 tiles of 192 px where centre crops give 4 - not independent (tiles of one photo share
    its scene), so a measurement over tiles should also count per photo (:func:`tile_photo`)."""
    if size <= 0:
        raise ValueError(f"tile size must be positive, got {size}")
    h, w = img.shape[:2]
    for top in range(0, h - size + 1, size):
        for left in range(0, w - size + 1, size):
            yield top, left, img[top : top + size, left : left + size]


def write_tiles(sources: Sequence[str | os.PathLike], size: int, folder: str | os.PathLike) -> dict[str, str]:
    """Write the :func:`tiles` of every photo of ``sources`` (folders or files) into ``folder`` as
    ``<photo>-<top>-<left>.png``; returns tile name -> photo name. A photo smaller than ``size``
    gives none; if no photo gives one, FileNotFoundError; two photos of one name, ValueError."""
    folder = Path(folder)
    owner: dict[str, str] = {}
    files = _sources(sources)
    stems = [f.stem for f in files]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise ValueError(f"photos of the same name in different folders would share tile names: {', '.join(twice)}")
    for f in files:
        for top, left, tile in tiles(read_rgb(f), size):
            name = f"{f.stem}-{top:04d}-{left:04d}"  # read back by tile_photo
            save_image(folder / f"{name}.png", tile)
            owner[name] = f.stem
    if not owner:
        raise FileNotFoundError(f"no photo of {', '.join(map(str, sources))} holds a {size}x{size} tile")
    return owner


def tile_photo(name: str) -> str:
    """The photo a :func:`write_tiles` tile name (``<photo>-<top>-<left>``) comes from; any other
    name is its own photo."""
    m = re.fullmatch(r"(.+)-\d{4}-\d{4}", name)
    return m[1] if m else name


def _sources(sources: Sequence[str | os.PathLike]) -> list[Path]:
    files: list[Path] = []
    for s in sources:
        p = Path(s)
        files += list_images(p) if p.is_dir() else [p]
    if not files:
        raise FileNotFoundError(f"no clean images in {', '.join(map(str, sources))}")
    return files


def _item_names(files: list[Path]) -> list[str]:
    """A cache file name per source photo: its stem, or ``stem-2``, ``stem-3``, ... where an earlier
    source took it - x.png in two folders, or x.png beside x.jpg, would otherwise share one item and
    leave the set a photo short."""
    taken: set[str] = set()  # casefolded: on macOS and Windows X.npz and x.npz are one file
    names = []
    for f in files:
        name, k = f.stem, 1
        while name.casefold() in taken:
            k += 1
            name = f"{f.stem}-{k}"
        taken.add(name.casefold())
        names.append(name)
    return names


def _manifest(files: list[Path], degradations: Mapping[str, Degradation], crop: int, seed: int) -> dict:
    return {
        "format": 2,
        "seed": seed,
        "crop": crop,
        # by content: a photo replaced by another of the same name and size (an edited BMP) is a new set
        "sources": [[f.name, hashlib.sha256(f.read_bytes()).hexdigest()] for f in files],
        "degradations": {t: repr(op) for t, op in degradations.items()},
    }


def _read_manifest(path: Path) -> dict | None:
    """A cache's manifest, or None where it is damaged (not JSON, not a manifest)."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("degradations"), dict) else None


class ValidationSet:
    """Items grouped by task, loaded from a cache folder made by :meth:`build`."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        manifest_path = self.folder / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{self.folder}: not a validation cache (no {MANIFEST})")
        manifest = _read_manifest(manifest_path)
        if manifest is None:
            raise ValueError(f"{manifest_path}: a damaged validation cache: remove {self.folder} to build it again")
        self.manifest = manifest
        self.items: list[ValidationItem] = []
        for task in self.manifest["degradations"]:
            for f in sorted((self.folder / task).glob("*.npz")):
                try:
                    with np.load(f) as z:
                        self.items.append(ValidationItem(task, f.stem, z["input"], z["target"]))
                except NPZ_READ_ERRORS as e:
                    raise ValueError(f"{f}: a damaged validation cache file ({str(e) or type(e).__name__}): "
                                     f"remove {self.folder} to build it again") from None

    @property
    def tasks(self) -> list[str]:
        return list(self.manifest["degradations"])

    def by_task(self, task: str) -> list[ValidationItem]:
        return [i for i in self.items if i.task == task]

    def __iter__(self) -> Iterator[ValidationItem]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def build(
        cls,
        sources: Sequence[str | os.PathLike],
        degradations: Mapping[str, Degradation],
        folder: str | os.PathLike,
        crop: int = 256,
        seed: int = 0,
    ) -> ValidationSet:
        """Make (or reuse) the cache in ``folder``: each photo centre-cropped to ``crop`` (0: whole),
        degraded once per task with ``default_rng((seed, crc32(task), photo index))``."""
        folder = Path(folder)
        files = _sources(sources)
        manifest = _manifest(files, degradations, crop, seed)
        path = folder / MANIFEST
        names = _item_names(files)
        complete = all((folder / task / f"{n}.npz").is_file() for task in degradations for n in names)
        if path.is_file() and complete and _read_manifest(path) == manifest:
            try:
                return cls(folder)
            except ValueError:  # a damaged file (a killed copy, a full disk): rebuilt below
                pass
        if path.is_file():
            path.unlink()  # stale, incomplete or damaged: rebuild
        for task, op in degradations.items():
            (folder / task).mkdir(parents=True, exist_ok=True)
            for old in (folder / task).glob("*.npz"):
                old.unlink()
            for i, (f, name) in enumerate(zip(files, names)):
                clean = center_crop(read_rgb(f), crop)
                rng = np.random.default_rng((seed, zlib.crc32(task.encode()), i))
                degraded = op(clean, rng).image.astype(np.float32)

                def write(tmp: str, degraded=degraded, clean=clean) -> None:
                    with open(tmp, "wb") as fh:
                        np.savez_compressed(fh, input=degraded, target=clean.astype(np.float32))

                atomic_write(folder / task / f"{name}.npz", write)
        atomic_write_text(path, json.dumps(manifest, indent=2))  # last: marks the cache complete
        return cls(folder)
