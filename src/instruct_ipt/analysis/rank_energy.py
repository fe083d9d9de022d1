"""How much of a fine-tuning delta a low-rank bias can hold, layer by layer (Instruct-IPT, Fig. 2).

The modulation adds ``B1 @ B2`` of rank r to each target weight. Whether a rank is enough shows in
the real change that full fine-tuning makes, ``W_ft - W_base``: the share of its energy (sum of
squared singular values) within its first r singular values. Each strategy gives each layer its
own r (constant: the same for all; proportional: a share of the layer's full rank), so both are
read off the same singular values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..models import IPTV2, IPTConfig
from ..modulation import DEFAULT_TARGETS, ModulationConfig, modulate
from .compare import paired_weights
from .unet import locate, network_order

if TYPE_CHECKING:
    from ..model import InstructIPT


@dataclass(frozen=True)
class RankEnergyRow:
    """One modulated layer: its delta's spectrum read at the rank of each strategy."""

    #: module name, e.g. ``encoders.0.blocks.0.attn.qkv``
    layer: str
    #: U-Net stage (``encoder 1`` .. ``bottleneck`` .. ``decoder 1``, ``refine``, ``output``) and resolution level
    stage: str
    level: int
    #: the weight's shape, and the matrix the modulation sees: ``(out, in/groups * k * k)``
    shape: tuple[int, ...]
    matrix: tuple[int, int]
    full_rank: int
    constant_rank: int
    proportional_rank: int
    #: energy share within the first ``rank`` singular values; NaN where the weight did not change
    constant_energy: float
    proportional_energy: float
    #: Frobenius norm of the delta
    delta_norm: float
    singular_values: tuple[float, ...] = field(repr=False)


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A conv or linear weight as the ``(out, in/groups * k * k)`` matrix the modulation adds ``B1 @ B2`` to.

    :meth:`~instruct_ipt.modulation.ModulatedLayer.delta_weight` is ``(B1 @ B2).view_as(W)`` with
    ``B2`` of ``W[0].numel()`` columns, so this reshape is its exact inverse.
    """
    return weight.reshape(weight.shape[0], -1)


def cumulative_energy(singular_values: torch.Tensor, k: int) -> float:
    """Share of ``sum(s**2)`` in the first ``k`` singular values (sorted descending); NaN for a zero matrix."""
    energy = singular_values.double() ** 2
    total = energy.sum()
    if total == 0:
        return math.nan
    return float(energy[:k].sum() / total)


def modulated_layers(
    config: IPTConfig, targets: Sequence[str] = DEFAULT_TARGETS, proportion: float = 0.05
) -> list[tuple[str, int]]:
    """``(layer name, proportional rank)`` of every layer the modulation targets, in network order.

    Selection and rank come from :func:`~instruct_ipt.modulation.modulate` itself, run on a
    weightless (meta-device) copy of the backbone, so they cannot drift from what training builds.
    """
    with torch.device("meta"):
        skeleton = IPTV2(config)
        handle = modulate(skeleton, ["analysis"], targets=targets, strategy="proportional", proportion=proportion)
    ranks = {name: layer.rank for name, layer in handle.layers()}
    return [(name, ranks[name]) for name in network_order(ranks, config.levels)]


def rank_energy(
    base: InstructIPT,
    finetuned: InstructIPT,
    constant: int = 8,
    proportional: float = 0.05,
    targets: Sequence[str] = DEFAULT_TARGETS,
) -> list[RankEnergyRow]:
    """One row per modulated layer, in network order: the energy of ``W_ft - W_base`` kept at the
    rank each strategy gives that layer.

    Constant: ``min(constant, full rank)`` (a higher rank holds nothing more); proportional: the
    modulation's own ``round(proportional * full rank)``, at least 1. Backbone weights only: for a
    modulated model, its task biases are not part of ``W``. The models must be comparable (see
    :func:`~instruct_ipt.analysis.compare.paired_weights`).
    """
    ModulationConfig(rank=constant)  # the modulation's own checks of both settings, before any work
    ModulationConfig(strategy="proportional", proportion=proportional)
    pairs = paired_weights(base, finetuned)
    rows = []
    for name, proportional_rank in modulated_layers(base.config, targets, proportional):
        w_base, w_ft = pairs[f"{name}.weight"]
        delta = as_matrix(w_ft.detach().double() - w_base.detach().double())
        s = torch.linalg.svdvals(delta)
        full = min(delta.shape)
        constant_rank = min(constant, full)
        _, part = locate(name, base.config.levels)
        rows.append(
            RankEnergyRow(
                layer=name,
                stage=part.stage,
                level=part.level,
                shape=tuple(w_base.shape),
                matrix=(delta.shape[0], delta.shape[1]),
                full_rank=full,
                constant_rank=constant_rank,
                proportional_rank=proportional_rank,
                constant_energy=cumulative_energy(s, constant_rank),
                proportional_energy=cumulative_energy(s, proportional_rank),
                delta_norm=float(delta.norm()),
                singular_values=tuple(s.tolist()),
            )
        )
    return rows
