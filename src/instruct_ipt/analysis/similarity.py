"""Per-group weight similarity of a fine-tuned model to its base (Instruct-IPT, Table 2).

Which layers does fine-tuning for one task move most? Each weight is compared as one flattened
vector (cosine similarity), and the similarities are averaged per layer group, every weight
counting once whatever its size, as the paper's table does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .compare import paired_weights
from .groups import GROUPS, OTHER, group_of

if TYPE_CHECKING:
    from ..model import InstructIPT


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two weights as flat vectors, in float64.

    Identical weights give exactly 1.0, also two zero weights (an untrained norm bias that stayed
    at zero did not change); a zero weight against a non-zero one gives 0.0.
    """
    a, b = a.detach().flatten().double(), b.detach().flatten().double()
    if torch.equal(a, b):
        return 1.0
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return 0.0
    return float(((a @ b) / (na * nb)).clamp(-1.0, 1.0))


def weight_similarity(base: InstructIPT, finetuned: InstructIPT) -> dict[str, float]:
    """Cosine similarity of every backbone weight, by canonical parameter name (checked as :func:`paired_weights`)."""
    return {name: cosine(a, b) for name, (a, b) in paired_weights(base, finetuned).items()}


def similarity(base: InstructIPT, finetuned: InstructIPT) -> dict[str, float]:
    """Mean cosine similarity per group (:data:`GROUPS`, then ``other``); groups without weights are left out."""
    per_group: dict[str, list[float]] = {g: [] for g in (*GROUPS, OTHER)}
    for name, value in weight_similarity(base, finetuned).items():
        per_group[group_of(name)].append(value)
    return {g: sum(v) / len(v) for g, v in per_group.items() if v}
