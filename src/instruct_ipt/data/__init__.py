"""Data: degradation synthesis, datasets, benchmark folders, image I/O."""

from .degradations import DEGRADATIONS, Degraded, degrade, make_degradation
from .images import ImageReadError, LoadedImage, list_images, load_image, read_rgb, save_image
from .paired import Layout, LayoutError, Pair, SeededNoise, detect_layout
from .synthetic import SyntheticDataset, TaskSampler, load_clean_images
from .validation import ValidationItem, ValidationSet

__all__ = [
    "DEGRADATIONS",
    "Degraded",
    "ImageReadError",
    "Layout",
    "LayoutError",
    "LoadedImage",
    "Pair",
    "SeededNoise",
    "SyntheticDataset",
    "TaskSampler",
    "ValidationItem",
    "ValidationSet",
    "degrade",
    "detect_layout",
    "list_images",
    "load_clean_images",
    "load_image",
    "make_degradation",
    "read_rgb",
    "save_image",
]
