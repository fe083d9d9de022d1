"""The training loop: stages (sync, plain, single, two-stage, bias-only), checkpoints, resume, DDP.

The batch of step ``s`` is a pure function of ``(seed, stage, s)``: sample ``i`` of a stage is
drawn by ``SyntheticDataset`` from ``default_rng((seed, stage, i))`` (and, when degradations are
made on the device, from a generator seeded per sample from that draw) and step ``s`` takes the
samples ``[s * B, (s + 1) * B)``, each DDP process its own slice. So a resumed run sees exactly
the batches an uninterrupted run would, without replaying the data pipeline.

Nothing in a step reads a value back from the device: the loss is summed and checked for NaN on
the device, and read only when a log line, validation or checkpoint is due (a GPU then never
waits for the host between steps).
"""

from __future__ import annotations

import copy
import json
import math
import random
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from ..adaptation import AdaptationConfig
from ..data.batched import collate_device
from ..data.degradations import DEGRADATIONS, make_degradation
from ..data.paired import load_training_pairs
from ..data.synthetic import SyntheticDataset, load_clean_images
from ..data.validation import ValidationSet
from ..eval.protocol import default_protocol
from ..inference import restore_array
from ..io import atomic_write_text
from ..model import InstructIPT, resolve_model_dir
from ..models import IPTConfig
from ..modulation import DEFAULT_TARGETS, ModulationConfig
from . import distributed as D
from .budget import BudgetError, Overheads, StageCost, fit_schedule, scaled_warmup
from .checkpoint import config_differences, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import ConfigError, StageConfig, TrainConfig, config_from_dict
from .ema import EMA

#: colour photos bundled with scikit-image (no download), used with ``data.skimage_photos``
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
#: steps timed per kind of stage for a time budget, after warm-up steps that also measure its start-up cost
CALIBRATION_WARMUP, CALIBRATION_STEPS = 3, 8


def calibration_warmup(workers: int) -> int:
    """Warm-up steps before timing: past the batches the DataLoader workers prefetch at the start
    (two each), so a data-bound pipeline is timed at its steady rate, not from a full queue."""
    return max(CALIBRATION_WARMUP, 2 * workers + 2)


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
    warmup: int
    grey_share: float = 0.0


def plan_stages(cfg: TrainConfig) -> list[Stage]:
    """The run as a list of stages: an explicit ``stages`` list, or the one(s) ``mode`` implies."""
    tasks = cfg.train_tasks or (None if cfg.mode == "bias-only" else list(cfg.tasks))
    warmup, grey = cfg.optim.warmup, cfg.data.grey_share
    if cfg.stages:
        return [
            Stage(i, s.name or f"{s.mode or cfg.mode}", s.mode or cfg.mode, s.tasks or tasks,
                  s.iterations or cfg.iterations, s.lr or cfg.optim.lr, warmup if s.warmup is None else s.warmup,
                  grey if s.grey_share is None else s.grey_share)
            for i, s in enumerate(cfg.stages)
        ]
    if cfg.mode == "two-stage":
        first = max(1, round(cfg.iterations * cfg.two_stage_split))
        return [
            Stage(0, "plain", "plain", tasks, first, cfg.optim.lr, warmup, grey),
            Stage(1, "biases", "bias-only", tasks, max(1, cfg.iterations - first), cfg.optim.lr, warmup, grey),
        ]
    return [Stage(0, cfg.mode, cfg.mode, tasks, cfg.iterations, cfg.optim.lr, warmup, grey)]


def with_schedule(cfg: TrainConfig, lengths: list[tuple[int, int]]) -> TrainConfig:
    """``cfg`` with its stages made explicit and given these (iterations, warm-up) pairs."""
    stages = plan_stages(cfg)
    if len(lengths) != len(stages):
        raise ConfigError(f"the schedule has {len(lengths)} stages, the config {len(stages)}")
    explicit = [
        StageConfig(name=s.name, mode=s.mode, tasks=None if s.tasks is None else list(s.tasks), iterations=n, lr=s.lr,
                    warmup=w, grey_share=s.grey_share)
        for s, (n, w) in zip(stages, lengths)
    ]
    return config_from_dict(replace(cfg, stages=explicit).to_dict())


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
                            targets=tuple(m.targets) if m.targets else DEFAULT_TARGETS, kind=m.modulation_kind)


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
        kind = cfg.model.adaptation
        if model is not None and kind != (None if model.adaptation_config is None else model.adaptation_config.kind):
            raise ConfigError(f"model.adaptation is {kind or 'not set'}, but model.init ({cfg.model.init}) has "
                              f"{'adaptation ' + model.adaptation_config.kind if model.adaptation_config else 'none'}: "
                              "an adaptation is built with the model, so give the same one (or none)")
        if model is None:
            m = cfg.model
            adaptation = None if m.adaptation is None else AdaptationConfig(kind=m.adaptation, instruction=m.adaptation_instruction)
            model = InstructIPT(_backbone_config(cfg), tasks=tasks, modulation=None, adaptation=adaptation)
    else:
        if model is not None and model.adaptation is not None:
            raise ConfigError(f"stage {stage.index} ({stage.mode}): the model has a feature adaptation "
                              f"({model.adaptation.config.kind}); it trains with mode plain, not with weight modulation")
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
    try:
        for task in tasks:
            items = val.by_task(task)[info.rank :: info.world]
            protocol = default_protocol(task)
            total = 0.0
            with model.merged(task):
                for item in items:
                    y = restore_array(model, item.input, None if model.modulated else task, tile=0)
                    total += protocol.measure(y, item.target)[f"psnr_{protocol.channels[0]}"]
            sums += [total, float(len(items))]
    finally:
        model.train(was_training)
    sums = D.all_sum(info, sums)
    return {t: sums[2 * i] / max(1.0, sums[2 * i + 1]) for i, t in enumerate(tasks)}


def synthesis_for(cfg: TrainConfig, device: torch.device) -> str:
    """Where this run makes its degradations (``data.synthesis``, with ``auto`` resolved)."""
    if cfg.data.synthesis == "auto":  # composite and paired samples are made in the workers only (for now)
        return "device" if device.type == "cuda" and not cfg.data.composite and not cfg.data.paired else "workers"
    return cfg.data.synthesis


def synthetic_ops(cfg: TrainConfig) -> dict[str, Any]:
    """The degradation operator of each task that has one (a task of the user's own is trained on
    its pairs only, ``data.paired``)."""
    return {t: make_degradation(t, **tc.degradation) for t, tc in cfg.tasks.items() if t in DEGRADATIONS}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageRunner:
    """One stage's optimisation: the (DDP-wrapped, optionally compiled) model, its optimiser,
    schedule, EMA and data, and :meth:`step`, which leaves every result on the device."""

    def __init__(self, trainer: Trainer, model: InstructIPT, stage: Stage, tasks: list[str], start_step: int) -> None:
        cfg, info = trainer.cfg, trainer.info
        self.cfg, self.info, self.model, self.stage = cfg, info, model, stage
        model.train()
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.freeze = None
        if stage.mode in ("sync", "bias-only"):
            self.freeze = model.modulation.freeze(train_tasks=tasks, train_backbone=stage.mode == "sync")
            self.params = self.freeze.parameters
        else:
            self.params = list(model.parameters())
        net: torch.nn.Module = model
        if info.enabled:
            net = DDP(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
        self.eager = net
        self.net = torch.compile(net, mode=cfg.compile) if cfg.compile else net
        self._compile_checked = cfg.compile is None
        # fused AdamW: one kernel for the whole update on CUDA; on a CPU 4.3 ms a step for `small` where the
        # default per-parameter loop took 16.6 (and 15.1 with foreach; docs/training.md); elsewhere the default
        fused = True if info.device.type in ("cuda", "cpu") else None
        self.opt = torch.optim.AdamW(self.params, lr=stage.lr, betas=cfg.optim.betas,
                                     weight_decay=cfg.optim.weight_decay, fused=fused)
        if self.freeze is not None:
            self.freeze.attach(self.opt, mask_gradients=False)  # (masked after each backward: _forward_backward)
        min_ratio = min(1.0, cfg.optim.min_lr / stage.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, stage.warmup, stage.iterations, min_ratio)
        )
        self.ema = EMA(model, cfg.ema) if cfg.ema else None
        self.use_amp = cfg.amp and info.device.type == "cuda"

        d, batch = cfg.data, cfg.data.batch_size
        self.dataset = SyntheticDataset(
            trainer.images, {t: trainer.ops[t] for t in tasks if t in trainer.ops}, patch_size=d.patch_size,
            length=stage.iterations * batch, task_weights={t: cfg.tasks[t].weight for t in tasks},
            tasks=model.tasks, seed=cfg.seed, synthesis=synthesis_for(cfg, info.device), grey_share=stage.grey_share,
            composite_share=d.composite, identity_share=d.identity, companions=trainer.ops,
            pairs={t: trainer.pairs[t] for t in tasks if t in trainer.pairs}, paired_share=d.paired_share,
        )
        self.dataset.set_epoch(stage.index)
        self.degrader = self.dataset.degrader() if self.dataset.synthesis == "device" else None
        self.loader = DataLoader(
            self.dataset, batch_sampler=StepBatchSampler(start_step, stage.iterations, batch, info.rank, info.world),
            num_workers=d.workers, pin_memory=info.device.type == "cuda",
            collate_fn=collate_device if self.degrader is not None else None,
        )
        # on-device bookkeeping, read only when a log, validation or checkpoint is due
        dev = info.device
        self.loss_sum = torch.zeros((), device=dev)
        self.counter = torch.full((), start_step, dtype=torch.long, device=dev)
        self.bad_step = torch.full((), -1, dtype=torch.long, device=dev)
        self.bad_loss = torch.zeros((), device=dev)

    def load_state(self, state: dict[str, Any]) -> None:
        # this optimiser's kind, not the checkpoint's (one from before AdamW was fused on the CPU says fused=None),
        # set before loading: loading places each parameter's step count where that kind needs it
        kind = {k: self.opt.defaults[k] for k in ("fused", "foreach")}
        saved = state["optimizer"]
        self.opt.load_state_dict({**saved, "param_groups": [{**g, **kind} for g in saved["param_groups"]]})
        self.sched.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])

    def to_device(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input and target on the device; the task ids stay on the host, where the model checks
        them and reads which tasks a batch holds without waiting on the device (the modulated
        layers copy them over once per forward) - except for a compiled model on a GPU, whose
        ``reduce-overhead`` mode captures CUDA graphs only from device inputs."""
        dev = self.info.device
        if self.degrader is not None:
            x, y, _ = self.degrader(batch, dev)
        else:
            x = batch["input"].to(dev, non_blocking=True)
            y = batch["target"].to(dev, non_blocking=True)
        if self.cfg.channels_last:
            x, y = x.contiguous(memory_format=torch.channels_last), y.contiguous(memory_format=torch.channels_last)
        ids = batch["task"]
        if self.cfg.compile and dev.type == "cuda":  # a host tensor in a compiled graph's inputs rules out its CUDA graphs
            ids = ids.to(dev, non_blocking=True)
        return x, y, ids

    def _forward_backward(self, net: torch.nn.Module, x, y, ids) -> torch.Tensor:
        # the last step's gradients go before the forward, not after it: their memory is free for the
        # forward's activations, and no gradient a compiled model's CUDA graphs made (in their memory pool)
        # is still held when those graphs run again
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_amp):
            out = net(x, ids)
        loss = compute_loss(out.float(), y, self.cfg.loss)
        loss.backward()
        if self.freeze is not None:
            self.freeze.mask_gradients()  # (before clipping, which would count the frozen rows' gradients)
        return loss

    def step(self, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor) -> None:
        """One optimisation step; a non-finite loss is recorded on the device (see :meth:`failure`)."""
        if not self._compile_checked:  # compilation happens in the first forward and backward
            try:
                loss = self._forward_backward(self.net, x, y, ids)
            except Exception as e:  # noqa: BLE001 - any compiler failure: train eagerly instead
                warnings.warn(f"torch.compile(mode={self.cfg.compile!r}) failed ({type(e).__name__}: {e}); "
                              "training without compilation", stacklevel=2)
                self.net = self.eager
                loss = self._forward_backward(self.net, x, y, ids)
            self._compile_checked = True
        else:
            loss = self._forward_backward(self.net, x, y, ids)
        # the gradients' norm, clipped or not (no clipping: an infinite bound multiplies them by 1): a
        # finite loss can still carry a non-finite gradient, whose update spoils every weight it reaches
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip, foreach=True)
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            self.ema.update()
        loss = loss.detach()
        self.counter += 1
        first_bad = ~(torch.isfinite(loss) & torch.isfinite(norm)) & (self.bad_step < 0)
        self.bad_step = torch.where(first_bad, self.counter, self.bad_step)
        self.bad_loss = torch.where(first_bad, loss, self.bad_loss)
        self.loss_sum += torch.nan_to_num(loss)

    def failure(self) -> tuple[int, float] | None:
        """(step, loss) of the first non-finite loss or gradient on any process since the stage began, or None
        (a sync point)."""
        own = int(self.bad_step.item())
        first = D.all_min(self.info, float(own) if own >= 0 else math.inf)
        if first == math.inf:
            return None
        mine = own == first
        loss, count = D.all_sum(self.info, [float(self.bad_loss.item()) if mine else 0.0, 1.0 if mine else 0.0])
        return int(first), loss / count

    def take_loss_sum(self) -> float:
        value = float(self.loss_sum)
        self.loss_sum.zero_()
        return value

    def averaged(self) -> InstructIPT:
        """The weights to validate and keep: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def close(self) -> None:
        if self.freeze is not None:
            self.freeze.release()
            self.freeze = None


class Trainer:
    """Runs a :class:`TrainConfig` to the end (or resumes one); rank 0 writes logs and checkpoints.

    ``max_minutes`` scales every stage's length so the whole run fits that many minutes on this
    machine (see :mod:`instruct_ipt.train.budget`).
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False, device: str | None = None, progress: bool = True,
                 max_minutes: float | None = None) -> None:
        if max_minutes is not None and max_minutes <= 0:
            raise ConfigError(f"--max-minutes must be positive, got {max_minutes}")
        self.cfg = cfg
        self.resume = resume
        self.device_arg = device
        self.progress = progress
        self.max_minutes = max_minutes
        self.out = Path(cfg.out)
        self.ckpt_path = self.out / "checkpoints" / "last.pt"
        self.history: list[dict[str, Any]] = []
        self.budget: dict[str, Any] | None = None

    # --- helpers -------------------------------------------------------------------------
    def _log(self, entry: dict[str, Any]) -> None:
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    def _say(self, text: str) -> None:
        if self.info.is_main and self.progress:
            tqdm.write(text)

    def _trained_tasks(self) -> set[str]:
        """Every task some stage trains (a bias-only stage without tasks: those model.init lacks)."""
        cfg, found = self.cfg, set()
        for stage in plan_stages(cfg):
            if stage.tasks is not None:
                found |= set(stage.tasks)
            elif stage.mode == "bias-only" and cfg.model.init:
                config = json.loads((resolve_model_dir(cfg.model.init) / "config.json").read_text(encoding="utf-8"))
                found |= {t for t in cfg.tasks if t not in config.get("tasks", [])}
            else:
                found |= set(cfg.tasks)
        return found

    def _load_images(self) -> list[np.ndarray]:
        d = self.cfg.data
        sources: list[Any] = []
        for folder in d.train:
            if not Path(folder).is_dir():
                raise FileNotFoundError(f"data.train: {folder}: no such folder")
            sources.append(folder)
        if d.skimage_photos:
            try:
                from skimage import data as skdata
            except ImportError as e:
                raise ConfigError("data.skimage_photos needs scikit-image (pip install scikit-image)") from e
            sources += [getattr(skdata, name)() for name in SKIMAGE_PHOTOS]
        if not sources:
            if d.paired and set(d.paired) >= set(self._trained_tasks()):  # every trained task has its pairs
                return []
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

    def _check_folders(self) -> None:
        """Every folder the run will read, refused by name before any step (a typo should not cost a stage)."""
        g = self.cfg.grid_spans
        for folder in g.photos if g else []:
            if not Path(folder).is_dir():
                raise FileNotFoundError(f"grid_spans.photos: {folder}: no such folder")
        if g is not None and not self.cfg.model.init:
            try:
                replace(_backbone_config(self.cfg), grid_span=g.span or self.cfg.data.patch_size)
            except ValueError as e:
                raise ConfigError(f"grid_spans.span: {e}") from e
        for task, folders in self.cfg.data.paired.items():
            for folder in folders:
                if not Path(folder).is_dir():
                    raise FileNotFoundError(f"data.paired.{task}: {folder}: no such folder")
        init = self.cfg.model.init
        if init and not (self.resume and self.ckpt_path.exists()) and not resolve_model_dir(init).is_dir():
            raise FileNotFoundError(f"model.init: {init}: no such model folder")

    def _validation_set(self) -> ValidationSet | None:
        d = self.cfg.data
        if not d.val:
            return None
        for folder in d.val:
            if not Path(folder).exists():
                raise FileNotFoundError(f"data.val: {folder}: no such folder")
        folder = Path(d.val_cache) if d.val_cache else self.out / "val-cache"
        if self.info.is_main:
            ValidationSet.build(d.val, self.ops, folder, crop=d.val_crop, seed=d.val_seed)
        D.barrier(self.info)
        return ValidationSet(folder)

    # --- the run ---------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> InstructIPT | None:
        """Train every stage; returns the final model (``None`` if ``stop_after`` steps ran first,
        which simulates a killed run in tests)."""
        self.t_start = time.perf_counter()
        self.info = D.setup(self.device_arg)
        try:
            return self._run(stop_after)
        finally:
            D.teardown(self.info)

    def _resume_state(self) -> dict[str, Any]:
        """The checkpoint to continue, after checking that the config (and budget) still match it."""
        cfg = self.cfg
        state = load_checkpoint(self.ckpt_path)
        budget = state.get("budget")
        if budget is not None:
            if self.max_minutes is not None and self.max_minutes != budget["max_minutes"] and self.info.is_main:
                print(f"continuing the schedule fitted to the run's first budget ({budget['max_minutes']} min); "
                      f"--max-minutes {self.max_minutes} is ignored", flush=True)
            self.cfg = cfg = with_schedule(cfg, [tuple(x) for x in budget["stages"]])
            self.budget = budget
        elif self.max_minutes is not None:
            raise ConfigError("this run was started without --max-minutes: resume it without, or start a new run")
        started = None if budget is not None else state["stage"] + (1 if state["step"] > 0 else 0)
        diffs = config_differences(state["config"], cfg.to_dict(), started_stages=started)
        if diffs:
            raise ConfigError("the config does not match the checkpoint: " + "; ".join(diffs))
        return state

    def _run(self, stop_after: int | None) -> InstructIPT | None:
        info = self.info
        if self.cfg.data.batch_size % info.world:
            raise ConfigError(f"data.batch_size {self.cfg.data.batch_size} is not divisible by {info.world} processes")
        self._check_folders()
        state = None
        if self.resume:
            state = self._resume_state()
        elif self.ckpt_path.exists():
            raise ConfigError(f"{self.out} already holds a run (checkpoints/last.pt): pass --resume, or choose another out")
        cfg = self.cfg
        random.seed(cfg.seed)  # model initialisation is reproducible; resume restores the RNG states
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.images = self._load_images()
        self.ops = synthetic_ops(cfg)
        # every pair read and checked now: a bad file is an error before the first step
        self.pairs = {t: load_training_pairs(f, t, min_size=cfg.data.patch_size) for t, f in cfg.data.paired.items()}
        val = self._validation_set()
        if self.max_minutes is not None and state is None:
            self._fit_budget(val)
            cfg = self.cfg
        stages = plan_stages(cfg)

        model: InstructIPT | None = None
        start_stage, start_step, stage_tasks = 0, 0, None
        if state is not None:
            model = InstructIPT.from_config_dict(state["model_config"])
            model._load_checked(state["model"], str(self.ckpt_path))  # weights of its own config, or a clear error
            start_stage, start_step, stage_tasks = state["stage"], state["step"], state.get("stage_tasks")
            self.history = state.get("history", [])
            self._log({"event": "resumed", "stage": start_stage, "step": start_step})
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
                                       resume_state, val, stop_after)
            if not finished:
                return None
            if info.is_main:
                model.save_pretrained(self.out / "stages" / f"{stage.index}-{stage.name}")
                if stage.index + 1 < len(stages):
                    save_checkpoint(self.ckpt_path, self._state(model, stage.index + 1, 0, None, None))
            D.barrier(info)
        assert model is not None
        spans_done = bool(state and state.get("grid_spans_done"))
        if info.is_main:
            # a finished run's checkpoint points past the last stage: --resume then only reports
            save_checkpoint(self.ckpt_path, self._state(model, len(stages), 0, None, None, spans_done))
            if cfg.grid_spans is not None and not spans_done:
                self._choose_grid_spans(model)
                save_checkpoint(self.ckpt_path, self._state(model, len(stages), 0, None, None, True))
            model.save_pretrained(self.out / "model")
            self._print_summary()
        D.barrier(info)
        return model

    def _state(self, model, stage, step, tasks, runner: StageRunner | None, grid_spans_done: bool = False) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "budget": self.budget,
            "stage": stage,
            "step": step,
            "stage_tasks": tasks,
            "model_config": model.config_dict(),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": None if runner is None else runner.opt.state_dict(),
            "scheduler": None if runner is None else runner.sched.state_dict(),
            "ema": None if runner is None or runner.ema is None else runner.ema.state_dict(),
            "rng": rng_state(),
            "sampler": {"next_step": step},
            "history": self.history,
            "grid_spans_done": grid_spans_done,
        }

    def _check_finite(self, runner: StageRunner, stage: Stage) -> None:
        failure = runner.failure()
        if failure is not None:
            last = self.ckpt_path if self.ckpt_path.exists() else None
            step, loss = failure
            what = f"loss became {loss}" if not math.isfinite(loss) else f"the gradient became non-finite (loss {loss:.4g})"
            raise TrainingError(
                f"{what} at step {step} of stage {stage.index} ({stage.name}); "
                f"stopped. Last good checkpoint: {last or 'none yet'}"
            )

    def _run_stage(self, model, stage, tasks, start_step, state, val, stop_after) -> bool:
        cfg, info = self.cfg, self.info
        runner = StageRunner(self, model, stage, tasks, start_step)
        if state is not None:
            runner.load_state(state)
            set_rng_state(state["rng"])
        global_batch = cfg.data.batch_size
        bar = tqdm(total=stage.iterations, initial=start_step, desc=f"stage {stage.index} {stage.name}",
                   disable=not (self.progress and info.is_main), dynamic_ncols=True)
        t_last, n_last, data_wait, paused = time.perf_counter(), 0, 0.0, 0.0
        try:
            batches = iter(runner.loader)
            for step in range(start_step, stage.iterations):
                t_fetch = time.perf_counter()
                batch = next(batches)
                x, y, ids = runner.to_device(batch)
                data_wait += time.perf_counter() - t_fetch
                runner.step(x, y, ids)
                done = step + 1
                n_last += 1
                due_log = done % cfg.log_every == 0 or done == stage.iterations
                due_val = val is not None and (done % cfg.val_every == 0 or done == stage.iterations)
                due_ckpt = done % cfg.ckpt_every == 0 and done < stage.iterations
                if due_log or due_val or due_ckpt:
                    self._check_finite(runner, stage)
                if due_log:
                    # mean over the steps since the last entry and over all ranks: one batch's loss
                    # swings with its task mix (a hazy batch costs several times a JPEG one)
                    mean_loss = D.all_sum(info, [runner.take_loss_sum()])[0] / (n_last * info.world)
                    now = time.perf_counter()
                    busy = max(1e-9, now - t_last - paused)  # training steps only, not validation or saving
                    sps = n_last * global_batch / busy
                    entry = {"stage": stage.index, "step": done, "loss": round(mean_loss, 6),
                             "lr": runner.sched.get_last_lr()[0], "samples_per_s": round(sps, 2),
                             "data_share": round(data_wait / busy, 3)}
                    self._log(entry)
                    bar.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{entry['lr']:.2e}", sps=f"{sps:.1f}")
                    t_last, n_last, data_wait, paused = now, 0, 0.0, 0.0
                bar.update(1)
                t_pause = time.perf_counter()
                if due_val:
                    scores = validate(runner.averaged(), val, info)
                    record = {"stage": stage.index, "step": done, "val_psnr": scores}
                    self.history.append(record)
                    self._log(record)
                    if scores and info.is_main:
                        bar.write("validation PSNR " + ", ".join(f"{t} {v:.2f}" for t, v in scores.items()))
                if due_ckpt and info.is_main:
                    save_checkpoint(self.ckpt_path, self._state(model, stage.index, done, tasks, runner))
                paused += time.perf_counter() - t_pause
                self.steps_run += 1
                if stop_after is not None and self.steps_run >= stop_after:
                    return False
            self._check_finite(runner, stage)
        finally:
            bar.close()
            runner.close()
        if runner.ema is not None:  # the stage's result is the averaged model
            model.load_state_dict(runner.ema.module.state_dict())
        return True

    # --- time budget -------------------------------------------------------------------------
    def _fit_budget(self, val: ValidationSet | None) -> None:
        """Measure this machine, scale the stages to fit ``max_minutes``, and make that the run's config."""
        cfg, info = self.cfg, self.info
        stages = plan_stages(cfg)
        costs, over, compile_seconds = self._measure(stages, val)
        # every process must fit the same schedule: the least time left on any of them
        left = D.all_min(info, self.max_minutes * 60 - (time.perf_counter() - self.t_start))
        try:
            scale, lengths = fit_schedule([s.iterations for s in stages], costs, over, left,
                                          cfg.val_every if val is not None else None, cfg.ckpt_every,
                                          spent=self.max_minutes * 60 - left)
        except BudgetError as e:
            raise ConfigError(str(e)) from e
        schedule = [(n, scaled_warmup(s.warmup, s.iterations, n)) for s, n in zip(stages, lengths)]
        self.cfg = with_schedule(cfg, schedule)
        self.budget = {"max_minutes": self.max_minutes, "scale": scale, "stages": [list(x) for x in schedule],
                       "seconds_per_step": [c.step for c in costs], "start_seconds": [c.start for c in costs],
                       "validation_seconds": over.validation, "checkpoint_seconds": over.checkpoint,
                       "final_seconds": over.final, "compile_seconds": compile_seconds,
                       "measured_seconds": round(time.perf_counter() - self.t_start, 2)}
        self._log({"event": "budget", **self.budget})
        if info.is_main:
            print(f"time budget {self.max_minutes:g} min: stage lengths x{scale:.4g} -> "
                  + ", ".join(f"{s.name} {n} steps ({c.step * 1000:.0f} ms/step)" for s, n, c in zip(stages, lengths, costs))
                  + f"; measured in {self.budget['measured_seconds']:.0f} s"
                  + (f", {sum(compile_seconds):.0f} s of it compiling (and other first-use costs)"
                     if any(compile_seconds) else ""), flush=True)

    def _measure(self, stages: list[Stage], val: ValidationSet | None) -> tuple[list[StageCost], Overheads, list[float]]:
        """Time a few real steps of each kind of stage on throw-away copies of the model; the last
        item: per stage, the seconds its kind's first compiled start took beyond a later start -
        its compilation, paid here, with the process's other first-use costs (0 when not compiled,
        or when an earlier stage of its kind paid it)."""
        cfg, info = self.cfg, self.info
        by_kind: dict[tuple, tuple[StageCost, float, float]] = {}
        costs: list[StageCost] = []
        compiling: list[float] = []
        model: InstructIPT | None = None
        with torch.random.fork_rng(devices=[info.device.index or 0] if info.device.type == "cuda" else []):
            for stage in stages:
                torch.manual_seed(cfg.seed * 1009 + stage.index)
                need = calibration_warmup(cfg.data.workers) + CALIBRATION_STEPS
                probe = stage if stage.iterations >= need else replace(stage, iterations=need)
                model, tasks = prepare_model(cfg, probe, None if model is None else copy.deepcopy(model))
                model.to(info.device)
                kind = (stage.mode, tuple(tasks), len(model.tasks))
                first = kind not in by_kind
                if first:
                    by_kind[kind] = self._time_steps(model, probe, tasks)
                costs.append(by_kind[kind][0])
                compiling.append(by_kind[kind][2] if first else 0.0)  # (paid once per kind of stage)
            assert model is not None
            validation = self._time(lambda: validate(model, val, info)) if val is not None else 0.0
            # a checkpoint as a stage writes it, with its optimiser and average, timed by the probes (a model
            # alone is a quarter of that)
            checkpoint = max(c for _, c, _ in by_kind.values())
            with tempfile.TemporaryDirectory(dir=self.out if self.out.exists() else None) as tmp:
                saving = self._time(lambda: model.save_pretrained(Path(tmp) / "model"))
                final = checkpoint + saving
            costs = [replace(c, start=c.start + saving) for c in costs]  # each stage saves its model at its end
            if cfg.grid_spans is not None:
                final += self._grid_span_seconds(model)
        t = D.all_max(info, [c.step for c in costs] + [c.start for c in costs] + [validation, checkpoint, final]
                      + compiling)
        n = len(costs)
        return ([StageCost(t[i], t[n + i]) for i in range(n)], Overheads(t[2 * n], t[2 * n + 1], t[2 * n + 2]),
                t[2 * n + 3 :])

    def _time(self, fn) -> float:
        _synchronize(self.info.device)
        t = time.perf_counter()
        fn()
        _synchronize(self.info.device)
        return time.perf_counter() - t

    def _time_steps(self, model: InstructIPT, stage: Stage, tasks: list[str]) -> tuple[StageCost, float, float]:
        """Seconds per step once running, and the extra seconds of a stage's start (set-up,
        DataLoader workers, compilation), from the first steps of ``stage`` on a copy of ``model``;
        the seconds of a checkpoint of that stage (model, optimiser, average and data state); and
        the seconds its first start took beyond a later one when compiled (the compilation, with the
        process's other first-use costs; 0 when not compiled).

        A compiled model is compiled once per process: the real stage, started later on another
        copy, reuses this probe's graphs (guards on shapes and types, not on the module). So its
        start is timed again, on a fresh copy - counting the compilation in it would plan every
        stage's compilation twice, once spent measuring and once more in the schedule, and a run
        would end early by that much (minutes where the compilation is cold)."""
        warm = calibration_warmup(self.cfg.data.workers)
        runner, probe = None, copy.deepcopy(model)
        _synchronize(self.info.device)
        t0 = time.perf_counter()
        try:
            runner, steps = self._start_runner(probe, stage, tasks)
            self._time(lambda: steps(warm))
            timed = self._time(lambda: steps(CALIBRATION_STEPS)) / CALIBRATION_STEPS
            start = time.perf_counter() - t0 - (warm + CALIBRATION_STEPS) * timed
            with tempfile.TemporaryDirectory(dir=self.out if self.out.exists() else None) as tmp:
                checkpoint = self._time(lambda: save_checkpoint(  # (gathered from the device inside the timing, as a stage does)
                    Path(tmp) / "probe.pt", self._state(runner.model, stage.index, warm + CALIBRATION_STEPS, tasks, runner)))
            compiled = runner.net is not runner.eager  # (not when the compilation failed and it fell back)
        finally:
            if runner is not None:
                runner.close()
        runner = steps = probe = None  # (its model, optimiser and workers gone before the next start is timed)
        # every process probes again or none does: the probe's steps are collective operations under DDP
        if not D.all_max(self.info, [float(compiled)])[0]:
            return StageCost(timed, max(0.0, start)), checkpoint, 0.0
        again, probe = None, copy.deepcopy(model)
        _synchronize(self.info.device)
        t0 = time.perf_counter()
        try:  # a start with the graphs already compiled, as the real stage's will be
            again, steps = self._start_runner(probe, stage, tasks)
            self._time(lambda: steps(warm))
            elapsed = time.perf_counter() - t0
            if again.net is again.eager:  # compiling failed this time: the stage will run eagerly, at that pace
                timed = self._time(lambda: steps(CALIBRATION_STEPS)) / CALIBRATION_STEPS
            restart = elapsed - warm * timed  # (its warm-up steps at the pace they ran)
        finally:
            if again is not None:
                again.close()
        restart = max(0.0, min(restart, start))
        return StageCost(timed, restart), checkpoint, max(0.0, start - restart)

    def _start_runner(self, model: InstructIPT, stage: Stage, tasks: list[str]) -> tuple[StageRunner, Callable[[int], None]]:
        """A probe's runner on ``model``, and a function that runs its next ``n`` steps."""
        runner = StageRunner(self, model, stage, tasks, 0)
        batches = iter(runner.loader)

        def steps(n: int) -> None:
            for _ in range(n):
                runner.step(*runner.to_device(next(batches)))

        return runner, steps

    def _grid_span_seconds(self, model: InstructIPT) -> float:
        """The final grid-span choice's time: one whole-photo forward pass, times the passes it makes."""
        from ..data.images import list_images, read_rgb

        g = self.cfg.grid_spans
        per_folder = [list_images(folder) for folder in g.photos]
        if not any(per_folder):
            raise FileNotFoundError(f"grid_spans.photos: no images in {', '.join(g.photos)}")
        photos = sum(min(len(f), g.limit) if g.limit else len(f) for f in per_folder)  # limit is per folder
        image = read_rgb(next(f for f in per_folder if f)[0])
        model.eval()
        task = model.tasks[0]
        one = self._time(lambda: restore_array(model, image, task, tile=0))
        return one * photos * len(model.tasks) * 2

    # --- after the last stage -------------------------------------------------------------------
    def _choose_grid_spans(self, model: InstructIPT) -> None:
        from ..eval.grid_span import apply_choices, compare_grid_spans
        from ..eval.runner import Case, synthetic_cases

        g, t = self.cfg.grid_spans, time.perf_counter()
        span = g.span if g.span is not None else self.cfg.data.patch_size
        cases = [c for folder in g.photos
                 for c in synthetic_cases(folder, model.tasks, {"denoise": {"sigma": g.sigma}}, seed=g.seed, limit=g.limit)
                 if isinstance(c, Case)]
        choices = compare_grid_spans(model, cases, span)
        apply_choices(model, choices)
        self._log({"event": "grid_spans", "span": span, "seconds": round(time.perf_counter() - t, 2),
                   "choices": {c.task: {"image_wide": c.psnr_image_wide, "span": c.psnr_span, "chosen": c.best}
                               for c in choices}})
        print(f"grid span per task (mean PSNR on {len({c.name for c in cases})} whole photos, image-wide / span {span}):")
        for c in choices:
            print(f"  {c.task:<10} {c.psnr_image_wide:6.2f} / {c.psnr_span:6.2f}  -> {'image-wide' if c.best is None else c.best}")

    def _print_summary(self) -> None:
        if not self.history:
            print(f"done: model saved to {self.out / 'model'} (no validation set configured)")
            return
        last = self.history[-1]
        print(f"\nvalidation PSNR (dB) at stage {last['stage']} step {last['step']}:")
        for task, v in last["val_psnr"].items():
            print(f"  {task:<10} {v:6.2f}")
        print(f"model saved to {self.out / 'model'}")


def train(cfg: TrainConfig, resume: bool = False, device: str | None = None, progress: bool = True,
          max_minutes: float | None = None) -> InstructIPT | None:
    return Trainer(cfg, resume=resume, device=device, progress=progress, max_minutes=max_minutes).run()
