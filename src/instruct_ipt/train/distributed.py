"""DistributedDataParallel plumbing: ``torchrun`` sets the environment, we read it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str | None = None) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    from ..inference import pick_device

    use_cuda = pick_device(device).type == "cuda"  # an unavailable device: a one-line error before anything runs
    dev = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local, dev)


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def _all_reduce(info: DistInfo, values: list[float], op: dist.ReduceOp) -> list[float]:
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=op)
    return t.tolist()


def all_min(info: DistInfo, value: float) -> float:
    """The minimum of ``value`` over all processes (e.g. 'is every loss finite')."""
    return _all_reduce(info, [value], dist.ReduceOp.MIN)[0]


def all_sum(info: DistInfo, values: list[float]) -> list[float]:
    return _all_reduce(info, values, dist.ReduceOp.SUM)


def all_max(info: DistInfo, values: list[float]) -> list[float]:
    """The element-wise maximum over all processes (e.g. the slowest process's timings)."""
    return _all_reduce(info, values, dist.ReduceOp.MAX)
