"""The arms of the paper's ablations: one training config each, built on one shared base.

Every arm trains on the same data (denoise at sigma 25 and motion deblur, cut from the same clean
photos), with the same optimiser, loss, patch and batch, for the same time budget (or number of
steps); only what the ablation varies differs. An arm is a function from that shared base to a
config dict that :func:`~instruct_ipt.train.config_from_dict` accepts, so what each arm trains
is plain data, written to its run folder as ``config.yaml``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: the two elementary tasks of the paper's ablations, with their test settings
TASKS: tuple[str, ...] = ("denoise", "deblur")
SIGMA = 25.0
#: nominal length of an arm; a time budget scales it (instruct_ipt.train.budget)
NOMINAL_STEPS = 4000
#: learning rate of bias-only stages (as configs/cpu-small.yaml: biases start at zero effect)
BIAS_LR = 1e-3


def base_config(size: str, train: list[str], seed: int, out: str, steps: int = NOMINAL_STEPS,
                workers: int = 1) -> dict[str, Any]:
    """What every arm shares. No validation during training: arms are evaluated once, at the end,
    on the validation photos with the eval protocol (so the budget goes to training)."""
    return {
        "mode": "plain",
        "tasks": {"denoise": {"degradation": {"sigma": SIGMA}}, "deblur": {}},
        "model": {"size": size, "rank": 8, "strategy": "constant"},
        "data": {"train": list(train), "patch_size": 64, "batch_size": 8, "workers": workers},
        "optim": {"lr": 5e-4, "min_lr": 1e-6, "weight_decay": 1e-4, "warmup": 100, "grad_clip": 1.0},
        "loss": "l1",
        "ema": None,
        "iterations": steps,
        "log_every": 50,
        "val_every": 10**9,
        "ckpt_every": 200,
        "out": out,
        "seed": seed,
    }


Build = Callable[[dict[str, Any], dict[str, str]], dict[str, Any]]


@dataclass(frozen=True)
class Arm:
    """One trained model of an ablation.

    ``build(base, models)`` returns the arm's config; ``models`` maps each arm named in
    ``needs`` to its trained model folder (a fine-tune starts from the plain model of the same
    seed)."""

    name: str
    label: str
    build: Build
    needs: tuple[str, ...] = ()


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def _plain(base, models):
    return _with(base, mode="plain")


def _sync(base, models):
    return _with(base, mode="sync")


def _two_stage(base, models):
    # the paper's two-stage training: the plain model first, then each task's biases fine-tuned on
    # the frozen backbone *separately* (one bias-only stage per task), in the same total steps
    n = base["iterations"]
    half, quarter = max(1, n // 2), max(1, n // 4)
    return _with(base, mode="sync", stages=[
        {"name": "plain", "mode": "plain", "tasks": list(TASKS), "iterations": half},
        *({"name": f"biases-{t}", "mode": "bias-only", "tasks": [t], "iterations": quarter, "lr": BIAS_LR}
          for t in TASKS),
    ])


def _fine_tune(task: str) -> Build:
    def build(base, models):
        # from the plain model, every weight trained on one task: what Table 2 and Fig. 2 compare
        return _with(base, mode="single", train_tasks=[task], model={"init": models["plain"]})
    return build


def _output_only(**model: Any) -> Build:
    def build(base, models):
        return _with(base, mode="sync", model={"targets": ["output"], **model})
    return build


def _adapted(kind: str) -> Build:
    def build(base, models):
        # trained like the plain model (mode plain, mixed batches), conditioned through features
        return _with(base, mode="plain", model={"adaptation": kind})
    return build


ARMS: dict[str, Arm] = {a.name: a for a in (
    Arm("plain", "plain (mixed tasks, one shared model)", _plain),
    Arm("sync", "weight modulation, synchronous (Instruct-IPT)", _sync),
    Arm("two-stage", "weight modulation, two-stage (plain, then each task's biases)", _two_stage),
    Arm("ft-denoise", "plain, then fine-tuned on denoise alone", _fine_tune("denoise"), needs=("plain",)),
    Arm("ft-deblur", "plain, then fine-tuned on deblur alone", _fine_tune("deblur"), needs=("plain",)),
    Arm("replace-output", "output layer replaced per task (weight replacement)", _output_only(modulation_kind="replace")),
    Arm("constant-output", "output layer modulated, constant rank 8", _output_only(strategy="constant", rank=8)),
    Arm("proportional-output", "output layer modulated, proportional rank 5%",
        _output_only(strategy="proportional", proportion=0.05)),
    Arm("prompt", "feature adaptation: PromptIR prompts at each decoder level", _adapted("prompt")),
    Arm("gating", "feature adaptation: InstructIR gates from the instruction (MiniLM)", _adapted("gating")),
    Arm("external", "feature adaptation: external control branch (ControlNet-style)", _adapted("external")),
)}
