"""Task modulation for diffusion U-Nets (the paper's Section 4.3): a masked-image diffusion model,
the ``inpaint`` and ``outpaint`` tasks' masks, training arms and DDIM sampling. The U-Net's target
groups are in :mod:`instruct_ipt.modulation.unet`; Table 8 is :mod:`instruct_ipt.ablation.table8`.

``model``, ``sample`` and ``train`` need diffusers (``pip install "instruct-ipt[diffusion]"``); they
are imported on first use, so the masks work without it.
"""

from __future__ import annotations

from typing import Any

from .masks import (
    CONDITIONED_CHANNELS,
    MASK_TASKS,
    MaskError,
    check_mask,
    draw_mask,
    inpaint_mask,
    outpaint_mask,
)

_LAZY = {
    "MaskedDiffusion": "model", "DiffusionConfig": "model", "SIZES": "model", "condition": "model",
    "inpaint": "sample", "sample_batch": "sample", "ImageSizeError": "sample",
    "DiffusionTrainConfig": "train", "DiffusionTrainer": "train",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CONDITIONED_CHANNELS",
    "MASK_TASKS",
    "SIZES",
    "DiffusionConfig",
    "DiffusionTrainConfig",
    "DiffusionTrainer",
    "ImageSizeError",
    "MaskError",
    "MaskedDiffusion",
    "check_mask",
    "condition",
    "draw_mask",
    "inpaint",
    "inpaint_mask",
    "outpaint_mask",
    "sample_batch",
]
