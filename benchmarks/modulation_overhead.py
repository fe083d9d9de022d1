"""Cost of weight modulation on CPU: merged inference and mixed-task training vs the plain backbone.

Prints median times and ratios over repeated runs in one process. Targets (issue 2):
merged inference / plain <= 1.02; mixed-task training step / plain training step <= 1.15.

    python benchmarks/modulation_overhead.py [--size small] [--patch 128] [--batch 4] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from instruct_ipt import InstructIPT
from instruct_ipt.models import IPTConfig


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="small")
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = IPTConfig.named(args.size)
    plain = InstructIPT(cfg, modulation=None)
    from instruct_ipt.modulation import ModulationConfig

    mod = InstructIPT(cfg, modulation=ModulationConfig(rank=args.rank))
    tasks = mod.tasks
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, size={args.size}, "
          f"{args.patch}x{args.patch}, rank={args.rank}, tasks={len(tasks)}")
    count = mod.parameter_count()
    print(f"backbone {count.backbone / 1e6:.3f} M parameters; per task +{count.per_task / 1e3:.1f} k ({100 * count.share:.2f}%)")

    # inference: one image, merged weights vs plain backbone
    x1 = torch.rand(1, 3, args.patch, args.patch)
    plain.eval()
    mod.eval().merge(tasks[0])
    with torch.inference_mode():
        pairs = []
        for _ in range(args.repeats):  # interleave so drift hits both alike
            tp = median_time(lambda: plain(x1), 1, warmup=1)
            tm = median_time(lambda: mod(x1), 1, warmup=1)
            pairs.append((tp, tm))
    tp = statistics.median(p for p, _ in pairs)
    tm = statistics.median(m for _, m in pairs)
    print(f"inference  plain {1000 * tp:8.1f} ms | merged modulated {1000 * tm:8.1f} ms | ratio {tm / tp:.3f} (target <= 1.02)")
    mod.unmerge()

    # training: a mixed-task batch (every sample its own task) vs the same batch on the plain model
    xb = torch.rand(args.batch, 3, args.patch, args.patch)
    yb = torch.rand(args.batch, 3, args.patch, args.patch)
    ids = [tasks[i % len(tasks)] for i in range(args.batch)]
    plain.train()
    mod.train()
    opt_p = torch.optim.AdamW(plain.parameters(), lr=1e-4)
    opt_m = torch.optim.AdamW(mod.parameters(), lr=1e-4)

    def step(model, opt, t):
        opt.zero_grad(set_to_none=True)
        loss = (model(xb, t) - yb).abs().mean()
        loss.backward()
        opt.step()

    pairs = []
    for _ in range(args.repeats):
        tp = median_time(lambda: step(plain, opt_p, None), 1, warmup=1 if not pairs else 0)
        tm = median_time(lambda: step(mod, opt_m, ids), 1, warmup=1 if not pairs else 0)
        pairs.append((tp, tm))
    tp = statistics.median(p for p, _ in pairs)
    tm = statistics.median(m for _, m in pairs)
    print(f"train step plain {1000 * tp:8.1f} ms | mixed-task modulated {1000 * tm:8.1f} ms | ratio {tm / tp:.3f} "
          f"(target <= 1.15), batch {args.batch}")


if __name__ == "__main__":
    main()
