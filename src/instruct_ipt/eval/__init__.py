"""Evaluation: metrics, protocols, benchmark runs."""

from .metrics import gaussian_window, psnr, rgb_to_y, ssim
from .protocol import DEFAULT_PROTOCOLS, Protocol, default_protocol

__all__ = ["DEFAULT_PROTOCOLS", "Protocol", "default_protocol", "gaussian_window", "psnr", "rgb_to_y", "ssim"]
