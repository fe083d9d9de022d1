"""``jpeg``: JPEG compression artefacts (Pillow's libjpeg, 4:2:0 chroma subsampling)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .base import Degraded, Range, check_image, check_range, sample


@dataclass
class JPEG:
    """Encode and decode at a ``quality`` (1-95) drawn per image."""

    quality: Range = (10.0, 60.0)
    task: str = "jpeg"

    def __post_init__(self) -> None:
        check_range("JPEG", "quality", self.quality, 1, 95)

    def __call__(self, clean: np.ndarray, rng: np.random.Generator) -> Degraded:
        clean = check_image(clean)
        q = round(sample(rng, self.quality))
        buf = io.BytesIO()
        Image.fromarray((np.clip(clean, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buf, format="JPEG", quality=q)
        buf.seek(0)
        out = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0
        return Degraded(out, {"quality": float(q)})
