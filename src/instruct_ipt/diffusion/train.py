"""``instruct-ipt diffusion train CONFIG``: the base model and the four arms of the paper's Table 8.

Arms (``arm:`` in the config):

- ``base``: a fresh U-Net trained on generic box masks (:data:`~instruct_ipt.diffusion.data.PRETRAIN`):
  the "original weights" every other arm starts from;
- ``plain``: the base fine-tuned, all weights, on mixed ``inpaint``/``outpaint`` batches (one model
  for both tasks);
- ``bias-only``: the base frozen, per-task low-rank biases trained;
- ``sync``: the base and the task biases trained together (synchronous training).

Every step is a pure function of ``(seed, step)`` (the batch, the noise, the timesteps), so a killed
run resumes from its last checkpoint and ends where an uninterrupted one would (bit for bit on a
CPU; on a GPU up to the non-determinism of its convolution kernels). A time budget
(``--max-minutes``) times a few steps and then fixes the step count, recorded in the checkpoint, so
arms at equal budget are comparable and a resumed run keeps its count.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from ..io import atomic_write_text
from ..train.checkpoint import load_checkpoint, save_checkpoint
from .data import PRETRAIN, MaskedViews, load_photos
from .masks import MASK_TASKS
from .model import SIZES, MaskedDiffusion, condition

Arm = Literal["base", "plain", "bias-only", "sync"]
DIFFUSION_ARMS: tuple[str, ...] = ("base", "plain", "bias-only", "sync")
#: steps timed for a time budget, after warm-up steps (the first ones pay allocation and caching)
BUDGET_WARMUP, BUDGET_TIMED = 2, 5
SUMMARY_NAME = "train-summary.json"


class DiffusionConfigError(ValueError):
    """A training config that cannot run (the message names the field)."""


@dataclass(frozen=True)
class DiffusionTrainConfig:
    """One training run; every field can be set in the YAML file."""

    out: str
    arm: str = "base"
    #: the base model's folder (``plain``, ``bias-only`` and ``sync`` fine-tune it)
    init: str | None = None
    size: str = "tiny"
    #: U-Net fields that override the size's (``block_out_channels``, ``attention``, ...; docs/diffusion.md)
    model: dict[str, Any] | None = None
    sample_size: int = 64
    tasks: tuple[str, ...] = MASK_TASKS
    rank: int = 8
    photos: tuple[str, ...] = ()
    skimage_photos: bool = True
    steps: int = 2000
    batch_size: int = 16
    lr: float = 2e-4
    #: learning rate of the task biases (zero-initialised low-rank factors learn slower at lr)
    bias_lr: float = 1e-3
    warmup: int = 100
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 25

    def __post_init__(self) -> None:
        if self.arm not in DIFFUSION_ARMS:
            raise DiffusionConfigError(f"arm {self.arm!r}: use one of {', '.join(DIFFUSION_ARMS)}")
        if self.size not in SIZES:
            raise DiffusionConfigError(f"size {self.size!r}: use one of {', '.join(SIZES)}")
        if self.arm != "base" and not self.init:
            raise DiffusionConfigError(f"arm {self.arm!r} fine-tunes a base model: set init to its folder")
        bad = [t for t in self.tasks if t not in MASK_TASKS]
        if bad or not self.tasks:
            raise DiffusionConfigError(f"tasks {list(self.tasks)}: use some of {', '.join(MASK_TASKS)}")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "sample_size", "rank"):
            if getattr(self, name) < 1:
                raise DiffusionConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.model:
            allowed = {"block_out_channels", "attention", "layers_per_block", "norm_num_groups", "attention_head_dim",
                       "train_timesteps", "beta_schedule", "prediction_type"}
            unknown = sorted(set(self.model) - allowed)
            if unknown:
                raise DiffusionConfigError(f"model: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")
        if not self.photos and not self.skimage_photos:
            raise DiffusionConfigError("no photos: give photos (folders) or skimage_photos: true")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiffusionTrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DiffusionConfigError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if "out" not in d:
            raise DiffusionConfigError("out: the run's folder is required")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> DiffusionTrainConfig:
        d = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        if not isinstance(d, dict):
            raise DiffusionConfigError(f"{path}: expected a mapping of fields")
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def build_model(cfg: DiffusionTrainConfig) -> MaskedDiffusion:
    """The arm's starting model: a fresh U-Net (``base``), or the base with biases added. The random
    initial weights (the U-Net's, the biases' ``B2``) are drawn from ``cfg.seed``, not from whatever
    state the global generator is in: the same config gives the same run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return _build_model(cfg)


def _build_model(cfg: DiffusionTrainConfig) -> MaskedDiffusion:
    if cfg.arm == "base":
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in (cfg.model or {}).items()}
        return MaskedDiffusion(replace(SIZES[cfg.size], sample_size=cfg.sample_size, **overrides))
    model = MaskedDiffusion.from_pretrained(cfg.init)  # type: ignore[arg-type]
    if model.modulation is not None:
        raise DiffusionConfigError(f"init {cfg.init}: a base model has no task biases; this one has {model.tasks}")
    if model.config.sample_size != cfg.sample_size:
        raise DiffusionConfigError(f"sample_size {cfg.sample_size} but the base model {cfg.init} trained at "
                                   f"{model.config.sample_size}")
    if cfg.arm in ("bias-only", "sync"):
        model.add_modulation(cfg.tasks, cfg.rank)
    return model


class DiffusionTrainer:
    """Trains one arm into ``cfg.out`` (``checkpoints/last.pt``, ``log.jsonl``, ``model/``)."""

    def __init__(self, cfg: DiffusionTrainConfig, device: str = "cpu", resume: bool = False,
                 max_minutes: float | None = None, progress: bool = True,
                 say: Callable[[str], None] = print) -> None:
        from ..inference import pick_device

        self.cfg, self.resume, self.max_minutes, self.progress, self.say = cfg, resume, max_minutes, progress, say
        self.device = pick_device(device)
        self.out = Path(cfg.out)

    @property
    def model_dir(self) -> Path:
        return self.out / "model"

    def _optimizer(self, model: MaskedDiffusion) -> tuple[torch.optim.Optimizer, Any]:
        cfg = self.cfg
        freeze = None
        if model.modulation is None:
            groups = [{"params": list(model.parameters()), "lr": cfg.lr}]
        else:
            freeze = model.modulation.freeze(train_backbone=cfg.arm == "sync")
            bias = model.modulation.task_parameters()
            groups = [{"params": bias, "lr": cfg.bias_lr, "weight_decay": 0.0}]
            if cfg.arm == "sync":
                groups.append({"params": model.modulation.backbone_parameters(), "lr": cfg.lr})
        for g in groups:
            g["initial_lr"] = g["lr"]
        opt = torch.optim.AdamW(groups, weight_decay=0.0)
        if freeze is not None:
            freeze.attach(opt)
        return opt, freeze

    def run(self) -> Path:
        """Train (or resume) and save ``model/``; returns its folder. A finished run is left as is."""
        cfg = self.cfg
        if cfg.init and Path(cfg.init).resolve() == self.model_dir.resolve():
            raise DiffusionConfigError(f"init {cfg.init} is this run's own output: give the arm another out")
        if (self.model_dir / "config.json").exists():
            recorded = self.out / "config.yaml"
            if recorded.exists() and yaml.safe_load(recorded.read_text(encoding="utf-8")) != cfg.to_dict():
                raise DiffusionConfigError(f"{self.out} holds a finished run of another config: use another out")
            self.say(f"{self.model_dir} exists: this run is finished")
            return self.model_dir
        ckpt_path = self.out / "checkpoints" / "last.pt"
        if ckpt_path.exists() and not self.resume:
            raise DiffusionConfigError(f"{self.out} holds a checkpoint: pass --resume to continue it, or use another out")
        model = build_model(cfg).to(self.device)
        data = MaskedViews(load_photos(cfg.photos, cfg.skimage_photos, cfg.sample_size), cfg.sample_size,
                           (PRETRAIN,) if cfg.arm == "base" else cfg.tasks, cfg.seed)
        opt, freeze = self._optimizer(model)
        scheduler = model.training_scheduler()
        step, total = 0, None if self.max_minutes else cfg.steps
        if self.resume and ckpt_path.exists():
            state = load_checkpoint(ckpt_path, required=("config", "model", "optimizer", "step", "total"))
            if state.get("config") != cfg.to_dict():
                raise DiffusionConfigError(f"{ckpt_path} was written with another config: use the same to resume")
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            step, total = int(state["step"]), int(state["total"])
            self.say(f"resuming at step {step} of {total}")
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        self._cut_log(step)
        model.train()
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, desc=f"diffusion {cfg.arm}", unit="step", disable=not self.progress)
        log = self.out / "log.jsonl"
        t0, losses, started = None, [], time.perf_counter()
        while total is None or step < total:
            if total is None and step == BUDGET_WARMUP:
                t0 = time.perf_counter()
            loss = self._step(model, data, scheduler, opt, step)
            losses.append(loss)
            step += 1
            bar.update(1)
            if total is None and step == BUDGET_WARMUP + BUDGET_TIMED:
                per_step = (time.perf_counter() - t0) / BUDGET_TIMED  # type: ignore[operator]
                total = max(step, int(self.max_minutes * 60 / per_step))  # type: ignore[operator]
                bar.total = total
                bar.refresh()
                self.say(f"time budget {self.max_minutes:g} min: {per_step:.3f} s/step measured -> {total} steps")
            if step % cfg.log_every == 0 or step == total:
                with open(log, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": step, "loss": sum(losses) / len(losses)}) + "\n")
                bar.set_postfix(loss=f"{sum(losses) / len(losses):.4f}")
                losses = []
            if total is not None and (step % cfg.checkpoint_every == 0 or step == total):
                save_checkpoint(ckpt_path, {"config": cfg.to_dict(), "model": model.state_dict(),
                                            "optimizer": opt.state_dict(), "step": step, "total": total})
        bar.close()
        if freeze is not None:
            freeze.release()
        atomic_write_text(self.out / SUMMARY_NAME, json.dumps(
            {"arm": cfg.arm, "steps": step, "seconds_this_session": round(time.perf_counter() - started, 1)}) + "\n")
        model.eval().cpu().save_pretrained(self.model_dir)
        return self.model_dir

    def _cut_log(self, step: int) -> None:
        """Keep the log lines up to ``step`` (where this session starts): a resumed run's log then
        reads like an uninterrupted one's, with no step logged twice."""
        log = self.out / "log.jsonl"
        if log.exists():
            kept = [line for line in log.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line)["step"] <= step]
            atomic_write_text(log, "".join(line + "\n" for line in kept))

    def _step(self, model: MaskedDiffusion, data: MaskedViews, scheduler: Any, opt: torch.optim.Optimizer,
              step: int) -> float:
        cfg = self.cfg
        for g in opt.param_groups:  # linear warm-up, then constant
            g["lr"] = g["initial_lr"] * min(1.0, (step + 1) / max(1, cfg.warmup))
        x0, mask, kinds = data.batch(step * cfg.batch_size, cfg.batch_size)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=gen)
        x_t = scheduler.add_noise(x0, noise, t)
        dev = self.device
        cond = condition(x0, mask).to(dev)
        tasks = kinds if model.modulation is not None else None
        pred = model(x_t.to(dev), t.to(dev), cond, tasks)
        target = scheduler.get_velocity(x0, noise, t) if model.config.prediction_type == "v_prediction" else noise
        loss = torch.nn.functional.mse_loss(pred, target.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"the loss became {value} at step {step}: lower lr")
        return value


def train(cfg: DiffusionTrainConfig, **kwargs: Any) -> Path:
    """Train one arm (see :class:`DiffusionTrainer`); returns the saved model's folder."""
    return DiffusionTrainer(cfg, **kwargs).run()
