"""Benchmark folders: recognise the standard layouts and pair degraded inputs with targets.

Recognised (sub-folder names are matched case-insensitively):

=============  ==========================================  ===========  =======================
layout         folders                                     task         pairing
=============  ==========================================  ===========  =======================
gopro          ``<scene>/blur`` + ``<scene>/sharp``        deblur       same file name
               (or ``blur`` + ``sharp`` at the top)
rain100        ``rainy`` + ``norain`` (Rain100L/H)          derain       number in the name
sots           ``hazy`` + ``clear`` or ``gt`` (SOTS)        dehaze       number before ``_``;
                                                                        many hazy per clear
csd            ``Snow`` + ``Gt`` (CSD)                      desnow       same file name
generic        ``input`` + ``target``                       (given)      same file name
clean-only     images only, e.g. BSD68 / CBSD68             denoise      noise added, seed 0
=============  ==========================================  ===========  =======================
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .images import ImageReadError, list_images, read_rgb, to_uint8

LAYOUT_HELP = (
    "expected one of: <scene>/blur + <scene>/sharp (GoPro), rainy/ + norain/ (Rain100L/H), "
    "hazy/ + clear/ or gt/ (SOTS), Snow/ + Gt/ (CSD), input/ + target/ (generic), "
    "or a folder of clean images only (BSD68/CBSD68, noise is added)"
)


class LayoutError(ValueError):
    """A benchmark folder that matches no known layout."""


@dataclass
class Pair:
    name: str
    target: Path
    input: Path | None  # None: the input is synthesised from the target (clean-only layouts)


@dataclass
class Layout:
    name: str
    task: str | None
    root: Path
    pairs: list[Pair]
    #: inputs that found no target (reported, not evaluated)
    unpaired: list[Path] = field(default_factory=list)


def _subdir(folder: Path, *names: str) -> Path | None:
    wanted = {n.lower() for n in names}
    for p in sorted(folder.iterdir()):
        if p.is_dir() and p.name.lower() in wanted:
            return p
    return None


def _number_id(stem: str) -> str:
    m = re.search(r"\d+", stem)
    return str(int(m.group())) if m else stem


def _prefix_id(stem: str) -> str:
    return _number_id(stem.split("_")[0])


def _pair(inputs: Path, targets: Path, key=lambda s: s, prefix: str = "") -> tuple[list[Pair], list[Path]]:
    by_key = {}
    for t in list_images(targets):
        by_key.setdefault(key(t.stem), t)
    pairs, unpaired = [], []
    for i in list_images(inputs):
        t = by_key.get(key(i.stem))
        if t is None:
            unpaired.append(i)
        else:
            pairs.append(Pair(prefix + i.stem, t, i))
    return pairs, unpaired


def detect_layout(root: str | os.PathLike) -> Layout:
    """Recognise ``root``'s layout and pair its images; :class:`LayoutError` names what was expected."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    checks = [
        ("rain100", "derain", ("rainy",), ("norain",), _number_id),
        ("sots", "dehaze", ("hazy",), ("clear", "gt"), _prefix_id),
        ("csd", "desnow", ("snow",), ("gt",), lambda s: s),
        ("gopro", "deblur", ("blur",), ("sharp",), lambda s: s),
        ("generic", None, ("input",), ("target",), lambda s: s),
    ]
    for name, task, in_names, tgt_names, key in checks:
        inputs, targets = _subdir(root, *in_names), _subdir(root, *tgt_names)
        if inputs and targets:
            pairs, unpaired = _pair(inputs, targets, key)
            if not pairs:
                raise LayoutError(f"{root}: looks like {name} ({inputs.name}/ + {targets.name}/) but no file pairs up")
            return Layout(name, task, root, pairs, unpaired)
    scenes = [d for d in sorted(root.iterdir()) if d.is_dir() and _subdir(d, "blur") and _subdir(d, "sharp")]
    if scenes:
        pairs, unpaired = [], []
        for d in scenes:
            p, u = _pair(_subdir(d, "blur"), _subdir(d, "sharp"), prefix=f"{d.name}/")
            pairs += p
            unpaired += u
        return Layout("gopro", "deblur", root, pairs, unpaired)
    clean = list_images(root)
    if clean:
        return Layout("clean-only", "denoise", root, [Pair(p.stem, p, None) for p in clean])
    for sub in ("original_png", "cbsd68", "bsd68", "gt", "clean"):
        d = _subdir(root, sub)
        if d and list_images(d):
            return Layout("clean-only", "denoise", root, [Pair(p.stem, p, None) for p in list_images(d)])
    raise LayoutError(f"{root}: unrecognised benchmark folder; {LAYOUT_HELP}")


class SeededNoise:
    """Gaussian test noise for clean-only benchmarks, as the standard scripts draw it.

    ``numpy.random.seed(0)`` once, then one ``normal(0, sigma/255, shape)`` draw per image in
    sorted file order (the DnCNN/Restormer convention), so the noisy set is identical between runs
    and matches published evaluations.
    """

    def __init__(self, sigma: float, seed: int = 0) -> None:
        self.sigma = sigma
        self.state = np.random.RandomState(seed)

    def __call__(self, clean: np.ndarray) -> np.ndarray:
        return (clean + self.state.normal(0, self.sigma / 255.0, clean.shape)).astype(np.float32)


class PairError(ValueError):
    """Training pairs that cannot be used as they are; the message names the file."""


def load_training_pairs(
    folders: Sequence[str | os.PathLike], task: str, min_size: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Real ``(degraded, clean)`` training pairs for ``task`` as uint8 (H, W, 3) arrays, from
    folders in the layouts :func:`detect_layout` recognises.

    Everything is read and checked here, before training starts, so a bad file costs seconds,
    not a stage: an input without a target, a pair whose images differ in size, an unreadable
    file, an image smaller than ``min_size`` (the training patch) on a side, a folder of clean
    images only (no pairs) or a benchmark folder of another task (a Rain100 folder listed for
    deblurring) are :class:`PairError` naming the file or folder. Grey files are replicated to
    RGB, as the model sees them at restore time.
    """
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    for folder in folders:
        try:
            layout = detect_layout(folder)
        except LayoutError as e:
            raise PairError(f"data.paired.{task}: {e}") from e
        if layout.name == "clean-only":
            raise PairError(f"data.paired.{task}: {folder} holds clean images only, no pairs; "
                            "expected input/ + target/ or a benchmark layout (blur/ + sharp/, rainy/ + norain/, ...)")
        if layout.task is not None and layout.task != task:
            raise PairError(f"data.paired.{task}: {folder} is a {layout.name} folder ({layout.task}), not {task} pairs")
        if layout.unpaired:
            names = ", ".join(str(p) for p in layout.unpaired[:3])
            more = f" and {len(layout.unpaired) - 3} more" if len(layout.unpaired) > 3 else ""
            raise PairError(f"data.paired.{task}: no target for {names}{more}")
        for pair in layout.pairs:
            assert pair.input is not None  # paired layouts always name an input
            images = []
            for path in (pair.input, pair.target):
                try:
                    images.append(to_uint8(read_rgb(path)))
                except ImageReadError as e:
                    raise PairError(f"data.paired.{task}: {e}") from e
            degraded, clean = images
            if degraded.shape != clean.shape:
                raise PairError(
                    f"data.paired.{task}: {pair.input} is {degraded.shape[1]}x{degraded.shape[0]} but its target "
                    f"{pair.target} is {clean.shape[1]}x{clean.shape[0]}; a pair must have one size"
                )
            if min(clean.shape[:2]) < min_size:
                raise PairError(f"data.paired.{task}: {pair.input} is {clean.shape[1]}x{clean.shape[0]}, smaller than "
                                f"the {min_size}px training patch")
            pairs.append((degraded, clean))
    if not pairs:
        raise PairError(f"data.paired.{task}: no pairs in {', '.join(map(str, folders)) or '(no folders)'}")
    return pairs
