"""Evaluation protocols: the choices that make published numbers differ, made explicit.

Tables in the literature disagree on the channel (RGB or Y), whether outputs are clamped to
[0, 1] and rounded to 8 bits (as when saved to PNG) before measuring, border crops, and whether
synthetic noisy inputs are kept as floats or rounded to 8 bits. A :class:`Protocol` names each
choice and is printed in every results header, so a number always says how it was measured.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from .metrics import psnr, ssim

Channel = Literal["rgb", "y", "both"]


@dataclass(frozen=True)
class Protocol:
    channel: Channel = "rgb"
    crop_border: int = 0
    #: clamp model outputs to [0, 1] before measuring
    clamp: bool = True
    #: round outputs to 8-bit levels before measuring (what a saved PNG holds)
    quantize: bool = True
    #: synthetic test noise kept as float, or rounded/clipped to 8 bits like a saved noisy PNG
    test_noise: Literal["float", "uint8"] = "float"

    def __post_init__(self) -> None:
        if self.channel not in ("rgb", "y", "both"):
            raise ValueError(f"channel must be rgb, y or both, got {self.channel!r}")
        if self.test_noise not in ("float", "uint8"):
            raise ValueError(f"test_noise must be float or uint8, got {self.test_noise!r}")
        if self.crop_border < 0:
            raise ValueError("crop_border must be >= 0")

    @property
    def channels(self) -> tuple[str, ...]:
        return ("rgb", "y") if self.channel == "both" else (self.channel,)

    def describe(self) -> str:
        return (
            f"channel={self.channel}, border={self.crop_border} px dropped, "
            f"{'clamped' if self.clamp else 'unclamped'}, {'uint8-quantised' if self.quantize else 'float'} outputs, "
            f"{self.test_noise} test noise"
        )

    def prepare_output(self, out: np.ndarray) -> np.ndarray:
        if self.clamp:
            out = np.clip(out, 0.0, 1.0)
        if self.quantize:
            out = np.round(np.clip(out, 0.0, 1.0) * 255.0) / 255.0
        return out

    def prepare_noisy_input(self, noisy: np.ndarray) -> np.ndarray:
        if self.test_noise == "uint8":
            return (np.round(np.clip(noisy, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)
        return noisy

    def measure(self, out: np.ndarray, target: np.ndarray, prepared: bool = False) -> dict[str, float]:
        """PSNR/SSIM per channel setting: keys ``psnr_rgb``, ``ssim_rgb``, ``psnr_y``, ``ssim_y``."""
        if not prepared:
            out = self.prepare_output(out)
        res = {}
        for ch in self.channels:
            y = ch == "y"
            res[f"psnr_{ch}"] = psnr(out, target, self.crop_border, y_channel=y)
            res[f"ssim_{ch}"] = ssim(out, target, self.crop_border, y_channel=y)
        return res

    def with_(self, **changes) -> Protocol:
        return replace(self, **changes)


#: the published convention per task: Y-channel PSNR for deraining (Rain100L/H tables), RGB otherwise
DEFAULT_PROTOCOLS: dict[str, Protocol] = {"derain": Protocol(channel="y")}


def default_protocol(task: str) -> Protocol:
    return DEFAULT_PROTOCOLS.get(task, Protocol())
