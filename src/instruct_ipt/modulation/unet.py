"""Target groups of a diffusers ``UNet2DModel`` for :func:`~instruct_ipt.modulation.modulate` (the
paper's Section 4.3 extends task modulation to a diffusion U-Net).

Names follow diffusers' module layout (``down_blocks.0.resnets.1.conv1``,
``mid_block.attentions.0.to_q`` ...), so the patterns need no import of diffusers; pass the groups a
U-Net has (one without attention blocks has no ``attention`` layers: every pattern given to
``modulate`` must match a layer).
"""

from __future__ import annotations

from collections.abc import Iterable

#: diffusers UNet2DModel layers by function; not the input/output convs, norms or skip shortcuts
UNET2D_TARGET_GROUPS: dict[str, tuple[str, ...]] = {
    "resnet": ("*.resnets.*.conv1", "*.resnets.*.conv2"),
    "attention": ("*.attentions.*.to_q", "*.attentions.*.to_k", "*.attentions.*.to_v", "*.attentions.*.to_out.0"),
    "sampling": ("*.downsamplers.*.conv", "*.upsamplers.*.conv"),
    "time": ("*.resnets.*.time_emb_proj", "time_embedding.linear_1", "time_embedding.linear_2"),
}


def unet2d_targets(groups: Iterable[str] = tuple(UNET2D_TARGET_GROUPS)) -> tuple[str, ...]:
    """The fnmatch patterns of the named groups (default: all of them)."""
    groups = list(groups)
    unknown = [g for g in groups if g not in UNET2D_TARGET_GROUPS]
    if unknown:
        raise ValueError(f"unknown U-Net target group(s) {', '.join(unknown)}; known: {', '.join(UNET2D_TARGET_GROUPS)}")
    return tuple(p for g in groups for p in UNET2D_TARGET_GROUPS[g])
