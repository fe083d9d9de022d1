"""Data: degradation synthesis, datasets, benchmark folders, image I/O."""

from .degradations import DEGRADATIONS, Degraded, degrade, make_degradation
from .images import ImageReadError, LoadedImage, list_images, load_image, read_rgb, save_image
from .paired import Layout, LayoutError, Pair, SeededNoise, detect_layout
from .synthetic import SyntheticDataset, TaskSampler, load_clean_images
from .validation import ValidationItem, ValidationSet

__all__ = [
    "DEGRADATIONS",
    "Degraded",
    "degrade",
    "make_degradation",
    "ImageReadError",
    "LoadedImage",
    "list_images",
    "load_image",
    "read_rgb",
    "save_image",
    "Layout",
    "LayoutError",
    "Pair",
    "SeededNoise",
    "detect_layout",
    "SyntheticDataset",
    "TaskSampler",
    "load_clean_images",
    "ValidationItem",
    "ValidationSet",
]
