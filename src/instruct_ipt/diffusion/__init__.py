"""Task modulation for diffusion U-Nets (the paper's Section 4.3): the ``inpaint`` and ``outpaint``
tasks' masks and conditioning. The U-Net's target groups are in
:mod:`instruct_ipt.modulation.unet`."""

from .masks import (
    CONDITIONED_CHANNELS,
    MASK_TASKS,
    MaskError,
    check_mask,
    conditioning,
    draw_mask,
    inpaint_mask,
    outpaint_mask,
)

__all__ = [
    "CONDITIONED_CHANNELS",
    "MASK_TASKS",
    "MaskError",
    "check_mask",
    "conditioning",
    "draw_mask",
    "inpaint_mask",
    "outpaint_mask",
]
