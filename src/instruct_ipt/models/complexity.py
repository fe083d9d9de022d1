"""Model cost: multiply-accumulates counted by PyTorch's own FLOP counter."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def count_macs(model: nn.Module, size: int = 128, **forward_kwargs) -> int:
    """Multiply-accumulates of one forward on a ``size x size`` RGB image.

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode` (convs, matmuls, attention),
    which reports 2 FLOPs per MAC; papers in this field usually quote MACs as "FLOPs".
    """
    p = next(model.parameters())
    x = torch.rand(1, 3, size, size, device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(x, **forward_kwargs)
    model.train(was_training)
    return counter.get_total_flops() // 2
