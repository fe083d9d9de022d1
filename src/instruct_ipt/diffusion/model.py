"""A masked-image diffusion model: a diffusers ``UNet2DModel`` that sees the noisy image, the known
pixels and the mask, optionally with task modulation (the paper's Section 4.3).

The U-Net predicts ``v`` (or the noise ``eps``) of ``x_t`` (DDPM training, diffusers' schedulers). Its input is
``concat(x_t, image * (1 - mask), mask)`` with images in [-1, 1]: 7 channels
(:data:`~instruct_ipt.diffusion.masks.CONDITIONED_CHANNELS`). With ``config.tasks`` the U-Net's
resnet convs, attention projections, samplers and time-embedding projections carry per-task
low-rank biases (:func:`~instruct_ipt.modulation.unet2d_targets`), selected per sample like the
restoration model's. Saved like the restoration model: ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io import atomic_write, atomic_write_text, load_safetensors
from ..modulation import TaskModulation, modulate, unet2d_targets
from .masks import CONDITIONED_CHANNELS

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
MODEL_FORMAT = "instruct-ipt-diffusion"


def _require_diffusers() -> Any:
    try:
        import diffusers
    except ImportError as e:  # the optional extra
        raise ImportError('the diffusion models need diffusers: pip install "instruct-ipt[diffusion]"') from e
    return diffusers


@dataclass(frozen=True)
class DiffusionConfig:
    """The U-Net's shape, the noise schedule and its target, and the modulated tasks (none: one
    shared model)."""

    #: the square size the model trains at; images for sampling must be at least this large
    sample_size: int = 64
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    #: self-attention per resolution level (the coarsest ones: attention at 64 px is costly on a CPU)
    attention: tuple[bool, ...] = (False, False, True)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    attention_head_dim: int = 32
    train_timesteps: int = 1000
    #: the cosine schedule (improved DDPM): keeps signal longer at small sizes than the linear one
    beta_schedule: str = "squaredcos_cap_v2"
    #: what the U-Net predicts: ``v_prediction`` (v = sqrt(a) eps - sqrt(1 - a) x0) or ``epsilon``.
    #: With eps the image estimate at high noise is (x_t - sqrt(1 - a) eps) / sqrt(a), which multiplies
    #: the U-Net's error by up to 40x (a = 0.0006 at t = 980 here): a small model trained for minutes
    #: then samples noise; with v the estimate is sqrt(a) x_t - sqrt(1 - a) v, no amplification
    #: (measured on the first CPU run: docs/reproduction.md)
    prediction_type: str = "v_prediction"
    tasks: tuple[str, ...] = ()
    rank: int = 8
    groups: tuple[str, ...] = ("resnet", "attention", "sampling", "time")
    format: str = field(default=MODEL_FORMAT)

    def __post_init__(self) -> None:
        if len(self.attention) != len(self.block_out_channels):
            raise ValueError(f"attention has {len(self.attention)} levels but block_out_channels "
                             f"{len(self.block_out_channels)}")
        if self.prediction_type not in ("v_prediction", "epsilon"):
            raise ValueError(f"prediction_type {self.prediction_type!r}: use v_prediction or epsilon")
        if self.sample_size % self.multiple:
            raise ValueError(f"sample_size {self.sample_size} must be a multiple of {self.multiple}")

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this (one halving per level below the first)."""
        return 2 ** (len(self.block_out_channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiffusionConfig:
        if not isinstance(d, dict) or d.get("format") != MODEL_FORMAT:
            found = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"not a diffusion model config (format {found!r}, expected {MODEL_FORMAT!r})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown diffusion config field(s) {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


#: named sizes: ``tiny`` trains on a 2-core CPU in minutes, ``small`` is for a GPU
SIZES: dict[str, DiffusionConfig] = {
    "tiny": DiffusionConfig(),
    "small": DiffusionConfig(block_out_channels=(64, 128, 256), attention=(False, True, True), layers_per_block=2,
                             norm_num_groups=32),
}


def condition(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, 4, H, W)``: the known pixels (``image`` in [-1, 1], unknown ones 0) and the mask (1 =
    generate), the channels concatenated to ``x_t``."""
    return torch.cat([image * (1.0 - mask), mask], dim=1)


class MaskedDiffusion(nn.Module):
    """The U-Net and, when ``config.tasks`` is set, its task modulation (see the module docstring)."""

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        diffusers = _require_diffusers()
        self.config = replace(config, tasks=())
        down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in config.attention)
        up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.attention))
        self.unet = diffusers.UNet2DModel(
            sample_size=config.sample_size, in_channels=CONDITIONED_CHANNELS, out_channels=3,
            block_out_channels=config.block_out_channels, layers_per_block=config.layers_per_block,
            down_block_types=down, up_block_types=up, norm_num_groups=config.norm_num_groups,
            attention_head_dim=config.attention_head_dim,
        )
        self.modulation: TaskModulation | None = None
        if config.tasks:
            self.add_modulation(config.tasks, config.rank)

    # tasks -----------------------------------------------------------------------------------
    @property
    def tasks(self) -> tuple[str, ...]:
        return self.config.tasks

    def add_modulation(self, tasks: Sequence[str], rank: int | None = None) -> TaskModulation:
        """Give the U-Net per-task biases (zero-initialised: the outputs are unchanged until they
        train); the weights it has become the shared backbone."""
        if self.modulation is not None:
            raise ValueError(f"the model is already modulated for {', '.join(self.tasks)}")
        rank = self.config.rank if rank is None else rank
        self.modulation = modulate(self.unet, list(tasks), rank=rank, targets=unet2d_targets(self.config.groups))
        self.config = replace(self.config, tasks=tuple(tasks), rank=rank)
        return self.modulation

    def check_task(self, task: str) -> None:
        if self.modulation is not None and task not in self.tasks:
            raise ValueError(f"unknown task {task!r}; this model's tasks: {', '.join(self.tasks)}")

    # forward ---------------------------------------------------------------------------------
    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                tasks: Sequence[str] | str | None = None) -> torch.Tensor:
        """The U-Net's prediction (``config.prediction_type``). ``tasks``: one name per sample (or one for all); ignored by a model
        without modulation, which serves every task with the same weights."""
        inp = torch.cat([x_t, cond], dim=1)
        if self.modulation is None or tasks is None:
            if self.modulation is not None:
                raise ValueError(f"this model is modulated: name the task(s), one of {', '.join(self.tasks)}")
            return self.unet(inp, t).sample
        with self.modulation.select(tasks):
            return self.unet(inp, t).sample

    # noise schedules ---------------------------------------------------------------------------
    def training_scheduler(self) -> Any:
        diffusers = _require_diffusers()
        return diffusers.DDPMScheduler(num_train_timesteps=self.config.train_timesteps,
                                       beta_schedule=self.config.beta_schedule,
                                       prediction_type=self.config.prediction_type)

    def sampling_scheduler(self) -> Any:
        """DDIM on the training schedule (deterministic with eta 0: a seed fixes the result)."""
        diffusers = _require_diffusers()
        return diffusers.DDIMScheduler(num_train_timesteps=self.config.train_timesteps,
                                       beta_schedule=self.config.beta_schedule, clip_sample=True,
                                       prediction_type=self.config.prediction_type)

    # files -------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """``config.json`` + ``model.safetensors`` (each written atomically)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": MODEL_FORMAT}))
        atomic_write_text(folder / CONFIG_NAME, json.dumps(self.config.to_dict(), indent=2) + "\n")
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> MaskedDiffusion:
        """A model saved by :meth:`save_pretrained` (weights through safetensors: no code runs)."""
        folder = Path(folder)
        path = folder / CONFIG_NAME
        if not path.exists():
            raise FileNotFoundError(f"{folder}: no {CONFIG_NAME} (not a diffusion model folder)")
        try:
            model = cls(DiffusionConfig.from_dict(json.loads(path.read_text(encoding="utf-8"))))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None
        state = load_safetensors(folder / WEIGHTS_NAME)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:  # weights of another configuration
            raise ValueError(f"{folder / WEIGHTS_NAME} does not match {path}: {str(e).splitlines()[0]}") from None
        return model.eval()
