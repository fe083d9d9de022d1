"""Training and evaluation samples of the masked-image diffusion model: square views of photos with
a seeded mask each.

A view is a random square of 1/4 to all of the photo's shorter side, resized to the model's size
(and flipped half the time): at 64 px whole scenes, not texture patches, so filling a hole or
extending a border needs the scene's layout. Photos are decoded once and kept at four times the
model's size, so the resize never upsamples and a view costs microseconds.

Every sample is a pure function of ``(seed, index)``: a resumed run draws the same batches, and
the evaluation set of an ablation is the same for every arm.

Mask kinds: the tasks' own (``inpaint``, ``outpaint``: :mod:`instruct_ipt.diffusion.masks`) and
``pretrain``, the generic boxes the base model learns on before the tasks are fine-tuned (the
paper's original weights were trained on generic masks, not on the tasks' shapes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.images import list_images, load_image
from .masks import MASK_TASKS, draw_mask

PRETRAIN = "pretrain"
MASK_KINDS = (*MASK_TASKS, PRETRAIN)
#: colour photos bundled with scikit-image (no download): the corpus's second source
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def pretrain_mask(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """One to three boxes of 10-60% of each side anywhere (they may touch the border): neither
    task's shape, some of both."""
    mask = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(1, 4))):
        bh, bw = max(1, int(rng.uniform(0.1, 0.6) * h)), max(1, int(rng.uniform(0.1, 0.6) * w))
        top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        mask[top : top + bh, left : left + bw] = 1.0
    if mask.all():  # nothing known: keep a corner
        mask[: h // 4, : w // 4] = 0.0
    return mask


def mask_of(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    if kind == PRETRAIN:
        return pretrain_mask(h, w, rng)
    return draw_mask(kind, h, w, rng)


def load_photos(folders: Sequence[str | os.PathLike], skimage_photos: bool, size: int) -> list[np.ndarray]:
    """The corpus as float32 RGB arrays, each downscaled to at most ``4 * size`` on its shorter side;
    a photo smaller than ``size`` is left out (it would need upsampling)."""
    sources: list[np.ndarray] = []
    for folder in folders:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder}: no such folder of photos")
        sources += [load_image(p).rgb for p in list_images(folder)]
    if skimage_photos:
        from skimage import data as skdata

        sources += [np.asarray(getattr(skdata, n)())[..., :3].astype(np.float32) / 255.0 for n in SKIMAGE_PHOTOS]
    photos = []
    for rgb in sources:
        short = min(rgb.shape[:2])
        if short < size:
            continue
        if short > 4 * size:
            scale = 4 * size / short
            im = Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8))
            im = im.resize((round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), Image.Resampling.LANCZOS)
            rgb = np.asarray(im, np.float32) / 255.0
        photos.append(rgb)
    if not photos:
        raise ValueError(f"no photo of at least {size}x{size} pixels in {', '.join(map(str, folders)) or 'the corpus'}")
    return photos


def square_view(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square of 1/4 to all of the shorter side, resized to ``size``, flipped half the time."""
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.25, 1.0) * min(h, w))
    side = max(side, size)
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = photo[top : top + side, left : left + side]
    if side != size:
        im = Image.fromarray((np.clip(crop, 0, 1) * 255 + 0.5).astype(np.uint8))
        crop = np.asarray(im.resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255.0
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop, dtype=np.float32)


class MaskedViews:
    """Seeded ``(view, mask, kind)`` samples; the mask kinds alternate sample by sample, so every
    batch mixes the tasks in equal shares (the synchronous training's mixed-task batches)."""

    def __init__(self, photos: Sequence[np.ndarray], size: int, kinds: Sequence[str], seed: int) -> None:
        unknown = [k for k in kinds if k not in MASK_KINDS]
        if unknown or not kinds:
            raise ValueError(f"mask kinds {list(kinds)}: use some of {', '.join(MASK_KINDS)}")
        self.photos, self.size, self.kinds, self.seed = list(photos), size, tuple(kinds), seed

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        rng = np.random.default_rng((self.seed, index))
        photo = self.photos[int(rng.integers(0, len(self.photos)))]
        kind = self.kinds[index % len(self.kinds)]
        return square_view(photo, self.size, rng), mask_of(kind, self.size, self.size, rng), kind

    def batch(self, first: int, count: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Samples ``first .. first + count - 1``: images ``(B, 3, S, S)`` in [-1, 1], masks
        ``(B, 1, S, S)``, and each sample's kind."""
        views, masks, kinds = zip(*(self.sample(first + i) for i in range(count)), strict=True)
        x = torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2) * 2.0 - 1.0
        m = torch.from_numpy(np.stack(masks))[:, None]
        return x.contiguous(), m, list(kinds)
