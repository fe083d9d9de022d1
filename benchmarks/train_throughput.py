"""Training throughput of the real pipeline (data synthesis + step) for `sync` vs `plain`.

Runs the trainer for a few iterations of each mode on scikit-image's photos, with the model size,
patch and batch of configs/cpu-small.yaml (override with flags), alternating the modes; prints the
best (over repeats) median samples/s over logged steps after the first two, and the ratio
sync / plain. `sync` trains denoise + deblur on mixed-task batches; `plain` the same data unmodulated.

    python benchmarks/train_throughput.py [--iterations 12] [--size small] [--patch 64] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import yaml

from instruct_ipt.train import Trainer, config_from_dict

ROOT = Path(__file__).resolve().parent.parent


def throughput(mode: str, args: argparse.Namespace, out: Path) -> float:
    base = yaml.safe_load((ROOT / "configs/cpu-small.yaml").read_text())
    cfg = {
        "mode": mode,
        "tasks": {"denoise": {"degradation": {"sigma": [0, 50]}}, "deblur": {}},
        "model": {"size": args.size, "rank": base["model"]["rank"]},
        "data": {"skimage_photos": True, "patch_size": args.patch, "batch_size": args.batch, "workers": args.workers},
        "optim": base["optim"],
        "iterations": args.iterations,
        "log_every": 1,
        "val_every": 10**9,
        "ckpt_every": 10**9,
        "out": str(out / mode),
    }
    Trainer(config_from_dict(cfg), progress=False, device="cpu").run()
    logs = [json.loads(x) for x in (out / mode / "log.jsonl").read_text().splitlines()]
    rates = [x["samples_per_s"] for x in logs if "samples_per_s" in x][2:]
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=2, help="alternate the modes this many times; report the best median")
    ap.add_argument("--size", default="small")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    sync, plain = 0.0, 0.0
    for _ in range(args.repeats):  # alternate so background load hits both modes alike
        with tempfile.TemporaryDirectory() as tmp:
            sync = max(sync, throughput("sync", args, Path(tmp)))
            plain = max(plain, throughput("plain", args, Path(tmp)))
    print(f"size={args.size} patch={args.patch} batch={args.batch} workers={args.workers} (CPU)")
    print(f"sync  {sync:7.2f} samples/s")
    print(f"plain {plain:7.2f} samples/s")
    print(f"ratio sync/plain {sync / plain:.3f}")


if __name__ == "__main__":
    main()
