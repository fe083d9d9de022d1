"""Batched ``jpeg``: compression stays in the worker."""

from __future__ import annotations

import numpy as np
import torch

from ..degradations.jpeg import JPEG
from .base import Wrapper


class BatchedJPEG(Wrapper):
    """:class:`JPEG`, run whole in the worker: ``draw`` encodes and decodes the crop with Pillow and
    returns the decoded image; ``apply`` only hands it back.

    Why not on the device: there is no torch JPEG codec worth it. ``torchvision.io`` decodes but
    does not encode on the GPU, and a differentiable re-implementation (DCT, quantisation tables,
    4:2:0 subsampling) would drift from libjpeg's rounding, which is exactly what the artefacts are.
    libjpeg on a small crop is about as cheap as the other ops' draws. The decoded image is shipped
    as uint8 (it is 8-bit levels, so this is lossless and a quarter of the transfer).
    """

    op: JPEG

    def draw(self, clean: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        decoded = self.op(clean, rng).image
        return {"image": np.rint(decoded.transpose(2, 0, 1) * 255).astype(np.uint8)}

    def apply(self, clean: torch.Tensor, draws: dict[str, torch.Tensor], seeds: torch.Tensor) -> torch.Tensor:
        return draws["image"].to(clean.dtype) / 255.0
