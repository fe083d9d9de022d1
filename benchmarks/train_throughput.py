"""Training throughput of the real pipeline on this machine: data-only and end-to-end samples/s.

Runs one stage of a training config (default: the first stage of configs/default.yaml) for a
number of steps, each variant in a fresh process, the variants alternating over ``--repeats``
rounds (background load then hits them alike), and prints per variant:

- data-only samples/s: the DataLoader (crops, parameter draws, or whole degradations in the
  ``workers`` synthesis) plus, with ``synthesis: device``, the batched degradations on the
  device - no model;
- end-to-end samples/s: training steps as the trainer runs them (median over windows of 10 steps
  after the first, best round);
- peak memory (CUDA: max allocated; CPU: the process's peak resident set);
- GPU busy share (CUDA, when NVML answers): mean utilisation sampled during the timed steps;
- ops/step: the aten ops other than views of one training step of the run (its batch's move to
  the device, forward, backward, clipping, optimiser, frozen task rows, average) - about the kernels
  a GPU launches per step, which can bound the step of a model this small (on CUDA counted under
  the trainer's bfloat16 autocast, whose casts are ops too; n/a for a compiled model).

``--compare KEY=VALUE`` adds a variant of this tree with that config override (repeatable; several
overrides in one variant separated by commas), ``--against REV`` the same measurement of another
revision's code and its own config file (a temporary ``git worktree``) - e.g. today's rate.

    python benchmarks/train_throughput.py --device cpu --against fa2c238 --compare data.synthesis=device
    python benchmarks/train_throughput.py --device cuda --config configs/gpu.yaml --steps 60
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOG_EVERY = 10


def _stage_config(config_text: str, stage: int, steps: int, overrides: list[str], out: str) -> dict:
    """One stage of the config as its own run: no validation, no checkpoints, no grid-span step."""
    import yaml

    cfg = yaml.safe_load(config_text)
    for item in overrides:  # same syntax as `instruct-ipt train --set`
        key, _, text = item.partition("=")
        *parents, leaf = key.split(".")
        node = cfg
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = yaml.safe_load(text)
    if cfg.get("stages"):
        st = dict(cfg["stages"][stage])
        st["iterations"] = steps
        if cfg.get("model", {}).get("init") is None and st.get("mode") == "bias-only":
            raise SystemExit("a bias-only stage needs a model to start from: benchmark a sync or plain stage")
        cfg["stages"] = [st]
    cfg["iterations"] = steps
    cfg["data"]["val"] = []
    cfg.pop("grid_spans", None)
    # a log line every LOG_EVERY steps: each reads the loss back (a sync point), so logging every step
    # would time a loop that drains the GPU each step, which the trainer does not do
    cfg.update(log_every=LOG_EVERY, val_every=10**9, ckpt_every=10**9, out=out)
    return cfg


def _data_only(cfg_dict: dict, device: str, steps: int) -> float | None:
    """Samples/s of the data pipeline alone (None for code without the ``synthesis`` option)."""
    import torch
    from torch.utils.data import DataLoader

    try:
        from instruct_ipt.data.batched import collate_device
    except ImportError:
        return None
    from instruct_ipt.data.degradations import make_degradation
    from instruct_ipt.data.synthetic import SyntheticDataset
    from instruct_ipt.train import config_from_dict
    from instruct_ipt.train.trainer import StepBatchSampler, Trainer, plan_stages, synthesis_for

    cfg = config_from_dict(cfg_dict)
    trainer = Trainer(cfg, progress=False, device=device)
    images = trainer._load_images()
    stage = plan_stages(cfg)[0]
    tasks = stage.tasks or list(cfg.tasks)
    d, dev = cfg.data, torch.device(device)
    ds = SyntheticDataset(images, {t: make_degradation(t, **cfg.tasks[t].degradation) for t in tasks},
                          patch_size=d.patch_size, length=steps * d.batch_size, tasks=list(cfg.tasks), seed=cfg.seed,
                          synthesis=synthesis_for(cfg, dev))
    degrader = ds.degrader() if ds.synthesis == "device" else None
    loader = DataLoader(ds, batch_sampler=StepBatchSampler(0, steps, d.batch_size), num_workers=d.workers,
                        pin_memory=dev.type == "cuda", collate_fn=collate_device if degrader else None)
    warm, t0, n = 3, 0.0, 0
    for i, batch in enumerate(loader):
        if i == warm:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0, n = time.perf_counter(), 0
        if degrader is not None:
            x, _, _ = degrader(batch, dev)
        else:
            x = batch["input"].to(dev, non_blocking=True)
        n += x.shape[0]
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0) if n else None


#: aten ops that only make another view of a tensor's storage (no kernel on a GPU)
VIEW_OPS = frozenset({"_reshape_alias", "_unsafe_view", "alias", "as_strided", "detach", "expand", "narrow", "permute",
                      "reshape", "select", "slice", "split", "squeeze", "t", "transpose", "unbind", "unflatten",
                      "unsqueeze", "view"})


def _count_step_ops(step_index: int) -> dict:
    """Count, in the run that follows, the aten ops other than views of training step ``step_index``
    (1-based): its batch's move to the device (with ``synthesis: device``, the degradations) and the
    step itself - forward, backward, clipping, optimiser, frozen rows, average, bookkeeping. About
    the kernels a GPU launches per step (on CUDA under the trainer's bfloat16 autocast, whose casts
    are ops too), which bound a small model's step when each takes less time to run than to launch.
    The result lands in the returned dict's ``"ops"`` (absent for code without a ``StageRunner``, whose
    column then says n/a)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    found: dict = {}
    try:
        from instruct_ipt.train.trainer import StageRunner
    except ImportError:
        return found
    count = [0]

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            count[0] += func.overloadpacket.__name__ not in VIEW_OPS
            return func(*args, **(kwargs or {}))

    calls = {"to_device": 0, "step": 0}

    def counted(name: str):
        inner = getattr(StageRunner, name)

        def wrapper(self, *args, **kwargs):
            calls[name] += 1
            if calls[name] != step_index:
                return inner(self, *args, **kwargs)
            with Count():
                result = inner(self, *args, **kwargs)
            if name == "step":
                found["ops"] = count[0]
            return result

        return wrapper

    for name in calls:
        setattr(StageRunner, name, counted(name))
    return found


def _worker(spec: dict) -> dict:
    """Measure one variant in this process (imports whatever ``instruct_ipt`` is on the path)."""
    import torch

    from instruct_ipt.train import Trainer, config_from_dict

    device = spec["device"]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _stage_config(spec["config_text"], spec["stage"], spec["steps"], spec["overrides"], str(Path(tmp) / "run"))
        data = _data_only(dict(cfg, out=str(Path(tmp) / "data")), device, min(spec["steps"], 40))
        # (not under torch.compile: its graphs run as a few calls, and counting inside one is not what it
        # runs; counted in the first window of LOG_EVERY steps, which the rate leaves out: counting slows a step)
        ops = {} if cfg.get("compile") else _count_step_ops(min(LOG_EVERY // 2, spec["steps"]))
        busy: list[float] = []
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(0.2):
                try:
                    busy.append(float(torch.cuda.utilization()))
                except Exception:  # noqa: BLE001 - NVML missing: no utilisation figure
                    return

        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            threading.Thread(target=poll, daemon=True).start()
        Trainer(config_from_dict(cfg), progress=False, device=device).run()
        stop.set()
        logs = [json.loads(x) for x in (Path(tmp) / "run" / "log.jsonl").read_text().splitlines()]
    rates = [x["samples_per_s"] for x in logs if "samples_per_s" in x]  # one per LOG_EVERY steps
    skip = 1 if len(rates) > 1 else 0  # the first window: start-up, compilation
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"data": data, "end_to_end": statistics.median(rates[skip:]), "peak_bytes": peak, "ops": ops.get("ops"),
            "busy": statistics.fmean(busy[len(busy) // 5 :]) if len(busy) > 4 else None,
            "batch": cfg["data"]["batch_size"], "patch": cfg["data"]["patch_size"], "workers": cfg["data"]["workers"],
            "size": cfg["model"]["size"]}


def _measure(spec: dict, src: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    r = subprocess.run([sys.executable, __file__, "--_worker", json.dumps(spec)], capture_output=True, text=True, env=env,
                       check=False)
    if r.returncode != 0:
        raise SystemExit(f"variant {spec['name']} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _check_variant(spec: dict) -> None:
    """Refuse a variant of this tree whose config does not load (an unknown key, a stage that is not there)."""
    sys.path.insert(0, str(ROOT / "src"))
    import yaml

    from instruct_ipt.train import ConfigError, config_from_dict

    stages = yaml.safe_load(spec["config_text"]).get("stages") or []
    stage = spec["stage"]
    if not (0 <= stage < len(stages) or (not stages and stage == 0)):
        have = f"stages 0-{len(stages) - 1}" if stages else "no stages (give --stage 0)"
        raise SystemExit(f"variant {spec['name']}: the config has no stage {stage}: it has {have}")
    try:
        config_from_dict(_stage_config(spec["config_text"], stage, spec["steps"], spec["overrides"], "unused"))
    except ConfigError as e:
        raise SystemExit(f"variant {spec['name']}: {e}") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--config", default="configs/default.yaml", help="training config (path relative to the repository)")
    ap.add_argument("--stage", type=int, default=0, help="which stage of the config to run")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2, help="alternate the variants this many times; report the best")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every variant")
    ap.add_argument("--compare", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                    help="an extra variant of this tree with these overrides")
    ap.add_argument("--against", metavar="REV", help="also measure this git revision (its code and its config file)")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker:
        print(json.dumps(_worker(json.loads(args._worker))))
        return

    base = {"device": args.device, "stage": args.stage, "steps": args.steps}
    text = (ROOT / args.config).read_text()
    variants = [({**base, "name": "this tree", "config_text": text, "overrides": args.set}, ROOT / "src")]
    for c in args.compare:
        variants.append(({**base, "name": c, "config_text": text, "overrides": args.set + c.split(",")}, ROOT / "src"))
    for spec, _ in variants:  # a bad override or stage: one line now, not a worker's traceback later
        _check_variant(spec)
    tmp = None
    if args.against:
        tmp = tempfile.mkdtemp()
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", tmp, args.against], check=True,
                       capture_output=True)
        old = subprocess.run(["git", "-C", str(ROOT), "show", f"{args.against}:{args.config}"], check=True,
                             capture_output=True, text=True).stdout
        variants.append(({**base, "name": args.against, "config_text": old, "overrides": args.set}, Path(tmp) / "src"))
    best: dict[str, dict] = {}
    try:
        for _ in range(args.repeats):
            for spec, src in variants:
                r = _measure(spec, src)
                prev = best.get(spec["name"])
                if prev is None or r["end_to_end"] > prev["end_to_end"]:
                    best[spec["name"]] = r
    finally:
        if tmp:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", tmp], check=False)
    first = best[variants[0][0]["name"]]
    print(f"{args.config} stage {args.stage}: {first['size']}, patch {first['patch']}, batch {first['batch']}, "
          f"workers {first['workers']}, device {args.device}, {args.steps} steps, best of {args.repeats}")
    print(f"{'variant':32s} {'data-only/s':>12s} {'end-to-end/s':>13s} {'peak memory':>12s} {'GPU busy':>9s} {'ops/step':>9s}")
    for spec, _ in variants:
        r = best[spec["name"]]
        data = "n/a" if r["data"] is None else f"{r['data']:.1f}"
        busy = "n/a" if r["busy"] is None else f"{r['busy']:.0f} %"
        ops = "n/a" if r.get("ops") is None else str(r["ops"])
        print(f"{spec['name']:32s} {data:>12s} {r['end_to_end']:13.2f} {r['peak_bytes'] / 2**30:10.2f} GiB {busy:>9s} {ops:>9s}")
    for spec, _ in variants[1:]:
        print(f"ratio this tree / {spec['name']}: {first['end_to_end'] / best[spec['name']]['end_to_end']:.3f}")


if __name__ == "__main__":
    main()
