"""The operations of one training forward and backward, in float32 and under bfloat16 autocast.

A GPU step of a model as small as ``small`` waits on the host, which spends tens of microseconds
on each operation it issues (docs/training.md, "Its first run on an H200"), so the count of
operations, not the arithmetic, is what such a step costs. This counts them on any machine: the
aten operations other than views (what a GPU launches, roughly) of one forward and backward of a
mixed-task batch, the model as the trainer runs it (train mode, channels-last, the stage's frozen
task rows), in float32 and under the CPU's bfloat16 autocast, whose casts are operations too. The
CPU's autocast casts the operands of matmuls and convolutions to bfloat16 as CUDA's does; CUDA's
also casts the inputs of layer norms, softmaxes and some reductions to float32, which the CPU's
does not, so a GPU step counts more casts than the autocast row here.

    python benchmarks/step_ops.py                       # small, six tasks, sync, batch 2 of 128 px
    python benchmarks/step_ops.py --size tiny --mode bias-only --top 8
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from instruct_ipt.model import InstructIPT
from instruct_ipt.train.trainer import compute_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import VIEW_OPS  # (the same definition of a view as the throughput benchmark)

TASKS = ("denoise", "deblur", "derain", "dehaze", "desnow", "jpeg")


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in VIEW_OPS:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def count(model: InstructIPT, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, autocast: bool) -> collections.Counter[str]:
    """The non-view operations of one forward and backward, with the trainer's L1 loss."""
    model.zero_grad(set_to_none=True)
    with _Count() as counter:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(x, ids)
        compute_loss(out.float(), y, "l1").backward()
    return counter.ops


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="small", help="model size (default small)")
    p.add_argument("--tasks", type=int, default=len(TASKS), help=f"tasks of the model (default {len(TASKS)})")
    p.add_argument("--mode", choices=("sync", "bias-only"), default="sync",
                   help="sync: backbone and the first two tasks' rows train; bias-only: the rows alone")
    p.add_argument("--batch", type=int, default=2, help="batch size, at least 2 (a mixed batch); the count does not "
                   "depend on it (default 2)")
    p.add_argument("--patch", type=int, default=128, help="patch side in pixels: a few ops depend on it (default 128, "
                   "as configs/gpu.yaml)")
    p.add_argument("--top", type=int, default=5, help="the most frequent operations to list per row (default 5)")
    args = p.parse_args(argv)
    if args.batch < 2 or args.tasks < 2:
        p.error("a mixed batch needs --batch 2 or more and --tasks 2 or more (one sample or one task runs the "
                "single-task path)")
    torch.manual_seed(0)
    tasks = [f"task{i}" for i in range(args.tasks)] if args.tasks > len(TASKS) else list(TASKS[: args.tasks])
    model = InstructIPT(args.size, tasks=tasks).train().to(memory_format=torch.channels_last)
    model.modulation.freeze(train_tasks=tasks[:2], train_backbone=args.mode == "sync")
    x, y = (torch.rand(args.batch, 3, args.patch, args.patch).contiguous(memory_format=torch.channels_last)
            for _ in range(2))
    ids = torch.arange(args.batch) % min(2, len(tasks))  # a mixed batch of the trained tasks
    print(f"{args.size}, {len(tasks)} tasks, {args.mode}, batch {args.batch} of {args.patch} px, channels-last: "
          "one forward and backward")
    print(f"{'':<26}{'ops':>8}{'casts':>8}  most frequent")
    for label, autocast in (("float32", False), ("bfloat16 autocast (CPU)", True)):
        ops = count(model, x, y, ids, autocast)
        top = ", ".join(f"{name} {n}" for name, n in ops.most_common(args.top))
        print(f"{label:<26}{sum(ops.values()):>8}{ops['_to_copy']:>8}  {top}")


if __name__ == "__main__":
    main()
