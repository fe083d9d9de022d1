"""Exponential moving average of the weights, with a warm-up of the decay.

A fixed decay ``d`` keeps ``d ** n`` of the starting weights after ``n`` updates: 31 % after
1,174 updates at 0.999, so a short stage's average is mostly the untrained model (measured on an
H200: denoise 24.1 dB with the average, 29.5 dB without). As in diffusers' ``EMAModel`` and
timm's model EMA, update ``n`` (counted from 0) uses ``min(decay, (1 + n) / (10 + n))``: the
average follows the weights closely at first and settles on ``decay`` after a few thousand
updates (``(1 + n) / (10 + n)`` reaches 0.999 at n = 8,990).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def warmup_decay(decay: float, n: int) -> float:
    """The decay of update ``n`` (0 for the first)."""
    return min(decay, (1 + n) / (10 + n))


class EMA:
    """A frozen copy of ``model`` (``.module``) that :meth:`update` pulls towards the live weights.

    Updates are in-place ``lerp`` over all parameters and floating buffers at once, with the
    decay computed on the host from an update counter: no device synchronisation per step.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self._pairs = self._tensor_pairs(model)

    def _tensor_pairs(self, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        ours = dict(self.module.named_parameters()) | {k: v for k, v in self.module.named_buffers() if v is not None}
        theirs = dict(model.named_parameters()) | {k: v for k, v in model.named_buffers() if v is not None}
        if ours.keys() != theirs.keys():
            raise ValueError("the model's tensors changed since the EMA was made (tasks added?): make a new EMA")
        return [(ours[k], theirs[k]) for k in ours]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current weights of the model it was made from."""
        weight = 1.0 - warmup_decay(self.decay, self.updates)
        floats = [(a, b) for a, b in self._pairs if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [b for _, b in floats], weight)
        for a, b in self._pairs:
            if not a.is_floating_point():
                a.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load :meth:`state_dict` output (or the ``AveragedModel`` state older checkpoints hold)."""
        if "module" not in state:  # torch.optim.swa_utils.AveragedModel: module.* keys and n_averaged
            module = {k.removeprefix("module."): v for k, v in state.items() if k.startswith("module.")}
            state = {"decay": self.decay, "updates": int(state["n_averaged"]), "module": module}
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
