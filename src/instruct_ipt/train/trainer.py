"""The training loop: stages (sync, plain, single, two-stage, bias-only), checkpoints, resume, DDP.

The batch of step ``s`` is a pure function of ``(seed, stage, s)``: sample ``i`` of a stage is
drawn by ``SyntheticDataset`` from ``default_rng((seed, stage, i))`` and step ``s`` takes the
samples ``[s * B, (s + 1) * B)``, each DDP process its own slice. So a resumed run sees exactly
the batches an uninterrupted run would, without replaying the data pipeline.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from ..data.degradations import make_degradation
from ..data.synthetic import SyntheticDataset, load_clean_images
from ..data.validation import ValidationSet
from ..eval.protocol import default_protocol
from ..inference import restore_array
from ..io import atomic_write_text
from ..model import InstructIPT
from ..models import IPTConfig
from ..modulation import DEFAULT_TARGETS, ModulationConfig
from . import distributed as D
from .checkpoint import config_differences, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import ConfigError, TrainConfig

#: colour photos bundled with scikit-image (no download), used with ``data.skimage_photos``
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


class TrainingError(RuntimeError):
    """Training stopped (e.g. a non-finite loss); the message names the step and the last good checkpoint."""


@dataclass
class Stage:
    index: int
    name: str
    mode: str
    tasks: list[str] | None  # None: resolved when the stage starts
    iterations: int
    lr: float


def plan_stages(cfg: TrainConfig) -> list[Stage]:
    """The run as a list of stages: an explicit ``stages`` list, or the one(s) ``mode`` implies."""
    tasks = cfg.train_tasks or (None if cfg.mode == "bias-only" else list(cfg.tasks))
    if cfg.stages:
        return [
            Stage(i, s.name or f"{s.mode or cfg.mode}", s.mode or cfg.mode, s.tasks or tasks,
                  s.iterations or cfg.iterations, s.lr or cfg.optim.lr)
            for i, s in enumerate(cfg.stages)
        ]
    if cfg.mode == "two-stage":
        first = max(1, round(cfg.iterations * cfg.two_stage_split))
        return [
            Stage(0, "plain", "plain", tasks, first, cfg.optim.lr),
            Stage(1, "biases", "bias-only", tasks, max(1, cfg.iterations - first), cfg.optim.lr),
        ]
    return [Stage(0, cfg.mode, cfg.mode, tasks, cfg.iterations, cfg.optim.lr)]


class StepBatchSampler(Sampler[list[int]]):
    """Batches for steps ``start..total-1``: step ``s`` on rank ``r`` takes samples
    ``s * B + r * b ... s * B + (r + 1) * b - 1`` (global batch ``B``, local ``b = B / world``)."""

    def __init__(self, start: int, total: int, global_batch: int, rank: int = 0, world: int = 1) -> None:
        self.start, self.total, self.global_batch = start, total, global_batch
        self.local = global_batch // world
        self.rank = rank

    def __iter__(self) -> Iterator[list[int]]:
        for s in range(self.start, self.total):
            base = s * self.global_batch + self.rank * self.local
            yield list(range(base, base + self.local))

    def __len__(self) -> int:
        return max(0, self.total - self.start)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def compute_loss(out: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "charbonnier":
        return torch.sqrt((out - target) ** 2 + 1e-6).mean()
    return F.l1_loss(out, target)


def _modulation_config(cfg: TrainConfig) -> ModulationConfig:
    m = cfg.model
    return ModulationConfig(rank=m.rank, strategy=m.strategy, proportion=m.proportion,
                            targets=tuple(m.targets) if m.targets else DEFAULT_TARGETS)


def _backbone_config(cfg: TrainConfig) -> IPTConfig:
    size = cfg.model.size
    return IPTConfig.named(size) if isinstance(size, str) else IPTConfig.from_dict(size)


def _to_modulated(model: InstructIPT, mod: ModulationConfig) -> InstructIPT:
    new = InstructIPT(model.config, tasks=model.tasks, modulation=mod)
    new.load_backbone_state_dict(model.backbone_state_dict())
    return new


def prepare_model(cfg: TrainConfig, stage: Stage, model: InstructIPT | None) -> tuple[InstructIPT, list[str]]:
    """The model a stage trains, and the tasks it trains; converts or extends the previous stage's model."""
    tasks = stage.tasks
    if model is None and cfg.model.init:
        model = InstructIPT.from_pretrained(cfg.model.init)
    if stage.mode in ("plain", "single"):
        if model is not None and model.modulated:
            raise ConfigError(f"stage {stage.index} ({stage.mode}): a plain stage cannot follow or start from a modulated model")
        tasks = tasks or list(cfg.tasks)
        if stage.mode == "single" and len(tasks) != 1:
            raise ConfigError(f"stage {stage.index} (single): trains exactly one task, got {tasks}")
        if model is None:
            model = InstructIPT(_backbone_config(cfg), tasks=tasks, modulation=None)
    else:
        if model is None:
            if stage.mode == "bias-only":
                raise ConfigError("bias-only training needs a model to start from (model.init)")
            model = InstructIPT(_backbone_config(cfg), tasks=tasks or list(cfg.tasks), modulation=_modulation_config(cfg))
        elif not model.modulated:
            model = _to_modulated(model, _modulation_config(cfg))
        if tasks is None:
            tasks = [t for t in cfg.tasks if t not in model.tasks] if stage.mode == "bias-only" else list(cfg.tasks)
            if not tasks:
                raise ConfigError("bias-only: every configured task is already in the model; name the tasks to retrain in train_tasks")
    for t in tasks:
        if t not in cfg.tasks:
            raise ConfigError(f"stage {stage.index}: task {t!r} has no entry in tasks (weight and degradation)")
        if t not in model.tasks:
            model.add_task(t)
    return model, tasks


@torch.no_grad()
def validate(model: InstructIPT, val: ValidationSet, info: D.DistInfo) -> dict[str, float]:
    """Mean PSNR per task (each task's default protocol) on the cached validation set, over all ranks."""
    tasks = [t for t in val.tasks if t in model.tasks]
    was_training = model.training
    model.eval()
    sums = []
    for task in tasks:
        items = val.by_task(task)[info.rank :: info.world]
        protocol = default_protocol(task)
        total = 0.0
        if model.modulated:
            model.merge(task)
        for item in items:
            y = restore_array(model, item.input, None if model.modulated else task, tile=0)
            total += protocol.measure(y, item.target)[f"psnr_{protocol.channels[0]}"]
        if model.modulated:
            model.unmerge()
        sums += [total, float(len(items))]
    sums = D.all_sum(info, sums)
    model.train(was_training)
    return {t: sums[2 * i] / max(1.0, sums[2 * i + 1]) for i, t in enumerate(tasks)}


class Trainer:
    """Runs a :class:`TrainConfig` to the end (or resumes one); rank 0 writes logs and checkpoints."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, device: str | None = None, progress: bool = True) -> None:
        self.cfg = cfg
        self.resume = resume
        self.device_arg = device
        self.progress = progress
        self.out = Path(cfg.out)
        self.ckpt_path = self.out / "checkpoints" / "last.pt"
        self.history: list[dict[str, Any]] = []

    # --- helpers -------------------------------------------------------------------------
    def _log(self, entry: dict[str, Any]) -> None:
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    def _load_images(self) -> list[np.ndarray]:
        d = self.cfg.data
        sources: list[Any] = []
        for folder in d.train:
            if not Path(folder).is_dir():
                raise FileNotFoundError(f"data.train: {folder}: no such folder")
            sources.append(folder)
        if d.skimage_photos:
            from skimage import data as skdata

            sources += [getattr(skdata, name)() for name in SKIMAGE_PHOTOS]
        if not sources:
            raise ConfigError("data.train is empty: give folders of clean photos (or data.skimage_photos: true)")
        images = load_clean_images(sources)
        patches = sum((im.shape[0] // d.patch_size) * (im.shape[1] // d.patch_size) for im in images)
        if patches == 0:
            raise ConfigError(f"data.patch_size {d.patch_size} is larger than every training image")
        if d.batch_size > patches:
            raise ConfigError(
                f"data.batch_size {d.batch_size} is larger than the data: the {len(images)} clean images hold only "
                f"{patches} non-overlapping {d.patch_size}x{d.patch_size} patches; add photos or lower the batch size"
            )
        return images

    def _validation_set(self) -> ValidationSet | None:
        d = self.cfg.data
        if not d.val:
            return None
        for folder in d.val:
            if not Path(folder).exists():
                raise FileNotFoundError(f"data.val: {folder}: no such folder")
        folder = Path(d.val_cache) if d.val_cache else self.out / "val-cache"
        ops = {t: make_degradation(t, **tc.degradation) for t, tc in self.cfg.tasks.items()}
        if self.info.is_main:
            ValidationSet.build(d.val, ops, folder, crop=d.val_crop, seed=d.val_seed)
        D.barrier(self.info)
        return ValidationSet(folder)

    # --- the run ---------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> InstructIPT | None:
        """Train every stage; returns the final model (``None`` if ``stop_after`` steps ran first,
        which simulates a killed run in tests)."""
        self.info = D.setup(self.device_arg)
        try:
            return self._run(stop_after)
        finally:
            D.teardown(self.info)

    def _run(self, stop_after: int | None) -> InstructIPT | None:
        cfg, info = self.cfg, self.info
        if cfg.data.batch_size % info.world:
            raise ConfigError(f"data.batch_size {cfg.data.batch_size} is not divisible by {info.world} processes")
        stages = plan_stages(cfg)
        random.seed(cfg.seed)  # model initialisation is reproducible; resume restores the RNG states
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        images = self._load_images()
        self.ops = {t: make_degradation(t, **tc.degradation) for t, tc in cfg.tasks.items()}
        val = self._validation_set()

        model: InstructIPT | None = None
        start_stage, start_step, state, stage_tasks = 0, 0, None, None
        if self.resume:
            state = load_checkpoint(self.ckpt_path)
            started = state["stage"] + (1 if state["step"] > 0 else 0)
            diffs = config_differences(state["config"], cfg.to_dict(), started_stages=started)
            if diffs:
                raise ConfigError("the config does not match the checkpoint: " + "; ".join(diffs))
            model = InstructIPT.from_config_dict(state["model_config"])
            model.load_state_dict(state["model"])
            start_stage, start_step, stage_tasks = state["stage"], state["step"], state.get("stage_tasks")
            self.history = state.get("history", [])
            self._log({"event": "resumed", "stage": start_stage, "step": start_step})
        elif self.ckpt_path.exists():
            raise ConfigError(f"{self.out} already holds a run (checkpoints/last.pt): pass --resume, or choose another out")
        if info.is_main:
            atomic_write_text(self.out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

        self.steps_run = 0
        for stage in stages[start_stage:]:
            if stage.index == start_stage and stage_tasks is not None:
                stage.tasks = stage_tasks
            with torch.random.fork_rng(devices=[]):  # new task biases: the same in a resumed run
                torch.manual_seed(cfg.seed * 1009 + stage.index)
                model, tasks = prepare_model(cfg, stage, model)
            model.to(info.device)
            resume_state = state if stage.index == start_stage and state is not None and state.get("optimizer") else None
            finished = self._run_stage(model, stage, tasks, start_step if stage.index == start_stage else 0,
                                       resume_state, images, val, stop_after)
            if not finished:
                return None
            if info.is_main:
                model.save_pretrained(self.out / "stages" / f"{stage.index}-{stage.name}")
                if stage.index + 1 < len(stages):
                    save_checkpoint(self.ckpt_path, self._state(model, stage.index + 1, 0, None, None, None, None))
            D.barrier(info)
        if info.is_main:
            model.save_pretrained(self.out / "model")
            # a finished run's checkpoint points past the last stage: --resume then only reports
            save_checkpoint(self.ckpt_path, self._state(model, len(stages), 0, None, None, None, None))
            self._print_summary()
        return model

    def _state(self, model, stage, step, tasks, opt, sched, ema) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "stage": stage,
            "step": step,
            "stage_tasks": tasks,
            "model_config": model.config_dict(),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": None if opt is None else opt.state_dict(),
            "scheduler": None if sched is None else sched.state_dict(),
            "ema": None if ema is None else ema.state_dict(),
            "rng": rng_state(),
            "sampler": {"next_step": step},
            "history": self.history,
        }

    def _run_stage(self, model, stage, tasks, start_step, state, images, val, stop_after) -> bool:
        cfg, info = self.cfg, self.info
        model.train()
        freeze = None
        if stage.mode in ("sync", "bias-only"):
            freeze = model.modulation.freeze(train_tasks=tasks, train_backbone=stage.mode == "sync")
            params = freeze.parameters
        else:
            params = list(model.parameters())
        net = model
        if info.enabled:
            net = DDP(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
        opt = torch.optim.AdamW(params, lr=stage.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
        if freeze is not None:
            freeze.attach(opt)
        min_ratio = min(1.0, cfg.optim.min_lr / stage.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, cfg.optim.warmup, stage.iterations, min_ratio)
        )
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True) if cfg.ema else None
        if state is not None:
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            if ema is not None and state.get("ema") is not None:
                ema.load_state_dict(state["ema"])
            set_rng_state(state["rng"])

        global_batch = cfg.data.batch_size
        dataset = SyntheticDataset(
            images, {t: self.ops[t] for t in tasks}, patch_size=cfg.data.patch_size,
            length=stage.iterations * global_batch, task_weights={t: cfg.tasks[t].weight for t in tasks},
            tasks=model.tasks, seed=cfg.seed,
        )
        dataset.set_epoch(stage.index)
        loader = DataLoader(
            dataset, batch_sampler=StepBatchSampler(start_step, stage.iterations, global_batch, info.rank, info.world),
            num_workers=cfg.data.workers, pin_memory=info.device.type == "cuda",
        )
        use_amp = cfg.amp and info.device.type == "cuda"
        bar = tqdm(total=stage.iterations, initial=start_step, desc=f"stage {stage.index} {stage.name}",
                   disable=not (self.progress and info.is_main), dynamic_ncols=True)
        t_last, n_last, loss_sum = time.perf_counter(), 0, 0.0
        step = start_step
        try:
            for step, batch in zip(range(start_step, stage.iterations), loader):
                x = batch["input"].to(info.device, non_blocking=True)
                y = batch["target"].to(info.device, non_blocking=True)
                ids = batch["task"].to(info.device)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                    out = net(x, ids)
                loss = compute_loss(out.float(), y, cfg.loss)
                if D.all_min(info, float(torch.isfinite(loss).item())) < 1:
                    last = self.ckpt_path if self.ckpt_path.exists() else None
                    raise TrainingError(
                        f"loss became {loss.item()} at step {step + 1} of stage {stage.index} ({stage.name}); "
                        f"stopped. Last good checkpoint: {last or 'none yet'}"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.optim.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
                opt.step()
                sched.step()
                if ema is not None:
                    ema.update_parameters(model)
                done = step + 1
                n_last += 1
                loss_sum += loss.detach()
                if done % cfg.log_every == 0 or done == stage.iterations:
                    now = time.perf_counter()
                    sps = n_last * global_batch / max(1e-9, now - t_last)
                    # mean over the steps since the last entry and over all ranks: one batch's loss
                    # swings with its task mix (a hazy batch costs several times a JPEG one)
                    mean_loss = D.all_sum(info, [float(loss_sum)])[0] / (n_last * info.world)
                    entry = {"stage": stage.index, "step": done, "loss": round(mean_loss, 6),
                             "lr": sched.get_last_lr()[0], "samples_per_s": round(sps, 2)}
                    self._log(entry)
                    bar.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{entry['lr']:.2e}", sps=f"{sps:.1f}")
                    t_last, n_last, loss_sum = now, 0, 0.0
                bar.update(1)
                if val is not None and (done % cfg.val_every == 0 or done == stage.iterations):
                    scores = validate(ema.module if ema is not None else model, val, info)
                    record = {"stage": stage.index, "step": done, "val_psnr": scores}
                    self.history.append(record)
                    self._log(record)
                    if scores and info.is_main:
                        bar.write("validation PSNR " + ", ".join(f"{t} {v:.2f}" for t, v in scores.items()))
                if done % cfg.ckpt_every == 0 and done < stage.iterations and info.is_main:
                    save_checkpoint(self.ckpt_path, self._state(model, stage.index, done, tasks, opt, sched, ema))
                self.steps_run += 1
                if stop_after is not None and self.steps_run >= stop_after:
                    return False
        finally:
            bar.close()
            if freeze is not None:
                freeze.release()
        if ema is not None:  # the stage's result is the averaged model
            model.load_state_dict(ema.module.state_dict())
        return True

    def _print_summary(self) -> None:
        if not self.history:
            print(f"done: model saved to {self.out / 'model'} (no validation set configured)")
            return
        last = self.history[-1]
        print(f"\nvalidation PSNR (dB) at stage {last['stage']} step {last['step']}:")
        for task, v in last["val_psnr"].items():
            print(f"  {task:<10} {v:6.2f}")
        print(f"model saved to {self.out / 'model'}")


def train(cfg: TrainConfig, resume: bool = False, device: str | None = None, progress: bool = True) -> InstructIPT | None:
    return Trainer(cfg, resume=resume, device=device, progress=progress).run()
