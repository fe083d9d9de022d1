"""DistributedDataParallel with 2 CPU processes (gloo): a batch that lacks a task must still step."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from instruct_ipt import InstructIPT

TASKS = ["denoise", "deblur", "derain"]


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # same initial weights on both ranks
        model = InstructIPT("tiny", tasks=TASKS)
        with torch.no_grad():
            for p in model.modulation.task_parameters():
                p.normal_(0, 0.05)
        ddp = DDP(model)  # find_unused_parameters=False: every parameter must get a gradient
        opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
        torch.manual_seed(100 + rank)
        x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
        # no batch on any rank contains "derain"; rank 1's batch is mixed
        tasks = ["denoise", "denoise"] if rank == 0 else ["deblur", "denoise"]
        for _ in range(2):
            opt.zero_grad()
            (ddp(x, tasks) - y).abs().mean().backward()
            opt.step()
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_batch_lacking_a_task(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    s0, s1 = torch.load(tmp_path / "0.pt"), torch.load(tmp_path / "1.pt")
    torch.manual_seed(0)
    initial = InstructIPT("tiny", tasks=TASKS).state_dict()
    for k in s0:
        assert torch.equal(s0[k], s1[k]), f"ranks diverged at {k}"
    moved = [k for k in s0 if "task_B" not in k and not torch.equal(s0[k], initial[k])]
    assert moved, "the backbone did not train"
