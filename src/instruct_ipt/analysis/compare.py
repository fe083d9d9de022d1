"""Pairing the backbone weights of two models, refusing pairs that cannot be compared.

Both analyses compare a weight of a base model with the same weight of a fine-tuned one. That is
only meaningful for the same architecture, the same task list and the same set of weights; any
difference is refused with a message that names it rather than compared wrongly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..model import InstructIPT

#: config fields that do not change the weights: ``grid_span`` only decides which tokens attend to
#: each other at run time, and a fine-tune may choose its own
RUNTIME_FIELDS: tuple[str, ...] = ("grid_span",)


def config_differences(base: InstructIPT, finetuned: InstructIPT) -> list[str]:
    """One ``field: base vs fine-tuned`` line per differing backbone config field (run-time fields aside)."""
    ours, theirs = base.config.to_dict(), finetuned.config.to_dict()
    return [
        f"{k}: {ours.get(k)!r} (base) vs {theirs.get(k)!r} (fine-tuned)"
        for k in sorted(set(ours) | set(theirs))
        if k not in RUNTIME_FIELDS and ours.get(k) != theirs.get(k)
    ]


def paired_weights(base: InstructIPT, finetuned: InstructIPT) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{name: (base weight, fine-tuned weight)}`` over the backbone, in the base's order.

    Backbone weights only (:meth:`InstructIPT.backbone_state_dict`): a modulated model's task
    biases are not part of the comparison. Raises ValueError for a different architecture (each
    differing config field), a different task list, or missing, extra or reshaped weights.
    """
    for role, model in (("base", base), ("fine-tuned", finetuned)):
        mod = model.modulation_config
        if mod is not None and mod.kind == "replace":
            raise ValueError(f"the {role} model replaces weights per task (modulation kind replace): its replaced layers "
                             "have no shared weight to compare")
    problems = config_differences(base, finetuned)
    if problems:
        raise ValueError("the models have different architectures: " + "; ".join(problems))
    if base.tasks != finetuned.tasks:
        raise ValueError(f"the models have different tasks: {base.tasks} (base) vs {finetuned.tasks} (fine-tuned)")
    ours, theirs = base.backbone_state_dict(), finetuned.backbone_state_dict()
    missing = [k for k in ours if k not in theirs]
    extra = [k for k in theirs if k not in ours]
    if missing or extra:
        raise ValueError(
            "the models have different weights:"
            + (f" missing from the fine-tuned model: {_some(missing)}" if missing else "")
            + (";" if missing and extra else "")
            + (f" only in the fine-tuned model: {_some(extra)}" if extra else "")
        )
    shapes = [f"{k}: {tuple(v.shape)} vs {tuple(theirs[k].shape)}" for k, v in ours.items() if v.shape != theirs[k].shape]
    if shapes:
        raise ValueError("the models' weights have different shapes: " + _some(shapes))
    return {k: (v, theirs[k]) for k, v in ours.items()}


def _some(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")
