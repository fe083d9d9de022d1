"""Masks of the diffusion tasks ``inpaint`` and ``outpaint``, and their checks.

A mask is a float32 ``(H, W)`` array: 1 where the model must generate pixels, 0 where the image is
known. ``inpaint`` draws holes inside the image (free-form strokes, as LaMa and DeepFill train
with, and boxes); ``outpaint`` makes the unknown region touch the border (a band on every side, or
one half of the image), as extending a photo does. Every mask is a pure function of its
``numpy.random.Generator``, so training and evaluation masks are seeded like the degradations.

The U-Net sees ``concat(x_t, image * (1 - mask), mask)``: 3 + 3 + 1 = 7 input channels
(:func:`instruct_ipt.diffusion.model.condition`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

MASK_TASKS: tuple[str, ...] = ("inpaint", "outpaint")
#: input channels of a U-Net conditioned this way (noisy image, masked image, mask)
CONDITIONED_CHANNELS = 7


class MaskError(ValueError):
    """A mask that cannot condition the image (the message says why)."""


def _strokes(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 4))):
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        width = max(1, int(rng.uniform(0.04, 0.1) * min(h, w)))
        points = [(x, y)]
        for _ in range(int(rng.integers(3, 8))):
            angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.3) * min(h, w)
            x = float(np.clip(x + length * np.cos(angle), 0, w - 1))
            y = float(np.clip(y + length * np.sin(angle), 0, h - 1))
            points.append((x, y))
        draw.line(points, fill=255, width=width, joint="curve")
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _box(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((h, w), np.float32)
    bh, bw = int(rng.uniform(0.15, 0.4) * h) or 1, int(rng.uniform(0.15, 0.4) * w) or 1
    top, left = int(rng.integers(1, max(2, h - bh))), int(rng.integers(1, max(2, w - bw)))
    mask[top : top + bh, left : left + bw] = 1.0
    return mask


def inpaint_mask(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Free-form strokes, a box, or both, inside the image."""
    kind = int(rng.integers(0, 3))
    mask = np.zeros((h, w), np.float32)
    if kind in (0, 2):
        mask = np.maximum(mask, _strokes(h, w, rng))
    if kind in (1, 2):
        mask = np.maximum(mask, _box(h, w, rng))
    return (mask > 0.5).astype(np.float32)


def outpaint_mask(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A band of 1/16 to 1/8 of the size on every side (at most 44% of the image), or one half
    (left, right, top or bottom)."""
    mask = np.zeros((h, w), np.float32)
    if rng.random() < 0.5:
        bh, bw = max(1, int(rng.uniform(0.0625, 0.125) * h)), max(1, int(rng.uniform(0.0625, 0.125) * w))
        mask[:bh], mask[-bh:], mask[:, :bw], mask[:, -bw:] = 1.0, 1.0, 1.0, 1.0
    else:
        side = int(rng.integers(0, 4))
        if side == 0:
            mask[:, : w // 2] = 1.0
        elif side == 1:
            mask[:, w // 2 :] = 1.0
        elif side == 2:
            mask[: h // 2] = 1.0
        else:
            mask[h // 2 :] = 1.0
    return mask


def draw_mask(task: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded mask of ``task`` (``inpaint`` or ``outpaint``) for an ``h x w`` image."""
    if task == "inpaint":
        return inpaint_mask(h, w, rng)
    if task == "outpaint":
        return outpaint_mask(h, w, rng)
    raise ValueError(f"no mask for task {task!r}; mask tasks: {', '.join(MASK_TASKS)}")


def check_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``mask`` as float32 0/1 ``(H, W)`` (a grey or RGB mask file read as floats; > 0.5 is unknown),
    after checking that it fits ``image`` and leaves something known and something to fill."""
    mask = np.asarray(mask, dtype=np.float32)
    if mask.ndim == 3:
        mask = mask.mean(axis=2)
    if mask.shape != image.shape[:2]:
        raise MaskError(f"the mask is {mask.shape[1]}x{mask.shape[0]} but the image {image.shape[1]}x{image.shape[0]}: "
                        "they must be the same size")
    mask = (mask > 0.5).astype(np.float32)
    if not mask.any():
        raise MaskError("the mask is all zero: there is nothing to fill (white marks the pixels to generate)")
    if mask.all():
        raise MaskError("the mask is all one: no pixel of the image is kept, so there is nothing to condition on")
    return mask
