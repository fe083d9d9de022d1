"""The paper's layer groups (Instruct-IPT, Table 2), mapped onto the backbone's parameter names.

The paper measures how much each kind of layer changes when a model is fine-tuned for one task,
and modulates the kinds that change most. Groups are by function, wherever the layer sits in the
U-Net (the refinement stage's blocks count with every other stage's). A depthwise conv counts with
the layer it belongs to (``qkv_dw`` with QKV, ``ffn.dwconv`` with FFN) even though the modulation
never targets depthwise convs, because Table 2 compares functions, not modulation targets.

``other`` holds what fits none of the paper's groups. In :class:`~instruct_ipt.models.IPTV2` that is
only the channel attention's per-head temperatures (``*.attn.temperature``).
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING

from .unet import network_order

if TYPE_CHECKING:
    from ..model import InstructIPT

#: fnmatch patterns over backbone parameter names (as :meth:`InstructIPT.backbone_state_dict` keys them)
GROUP_PATTERNS: dict[str, tuple[str, ...]] = {
    "image embedder": ("embed.*",),
    "output layer": ("output.*",),
    "up-sampling": ("upsamples.*.conv.*",),
    "down-sampling": ("downsamples.*.conv.*",),
    "channel reduction": ("reduces.*",),
    "QKV": ("*.attn.qkv.*", "*.attn.qkv_dw.*", "*.grid.qkv.*"),
    "after-attention projection": ("*.attn.proj.*", "*.grid.proj.*"),
    "FFN": ("*.ffn.*",),
    "normalisation": ("*.norm1.*", "*.norm2.*", "*.norm3.*"),
}
#: the paper's groups, in the order of its table
GROUPS: tuple[str, ...] = tuple(GROUP_PATTERNS)
OTHER = "other"


def group_of(name: str) -> str:
    """The group of one backbone parameter name; ``other`` if none of the paper's groups fits."""
    found = [g for g, patterns in GROUP_PATTERNS.items() if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    if len(found) > 1:  # the table above is wrong for this name: no silent first match
        raise ValueError(f"{name!r} matches several groups: {', '.join(found)}")
    return found[0] if found else OTHER


def weight_groups(model: InstructIPT) -> dict[str, list[str]]:
    """Every backbone parameter name of ``model`` in its group, in network order.

    All of :data:`GROUPS` and ``other`` are keys, also when empty. Names are canonical (no
    ``base_layer``, no task biases), so a plain and a modulated model give the same groups.
    """
    groups: dict[str, list[str]] = {g: [] for g in (*GROUPS, OTHER)}
    for name in network_order(model.backbone_state_dict(), model.config.levels):
        groups[group_of(name)].append(name)
    return groups
