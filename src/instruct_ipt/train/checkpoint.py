"""Training checkpoints: everything a killed run needs to continue as if it had never stopped."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import atomic_write

FORMAT = "instruct-ipt-train"
#: config keys that may change between a run and its resumption (they do not change the result)
RESUMABLE_CHANGES = ("log_every", "val_every", "ckpt_every", "data.workers", "data.val_cache", "data.val_seed",
                     "compile", "grid_spans")


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write atomically: a kill during the write leaves the previous checkpoint intact."""
    return atomic_write(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not an instruct-ipt training checkpoint")
    return state


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(d, (list, tuple)) and any(isinstance(v, dict) for v in d):
        out = {}
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: list(d) if isinstance(d, tuple) else d}


def config_differences(saved: dict[str, Any], current: dict[str, Any], started_stages: int | None = None) -> list[str]:
    """Fields whose values differ (other than :data:`RESUMABLE_CHANGES`), as readable lines.

    With ``started_stages`` set, ``stages[i]`` for ``i >= started_stages`` may differ or be added or
    removed: a stage that has not run yet does not change the result so far, so a schedule can be
    shortened or extended at a stage boundary."""
    a, b = _flatten(saved), _flatten(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key.split(".")[0] in RESUMABLE_CHANGES or ".".join(key.split(".")[:2]) in RESUMABLE_CHANGES:
            continue
        stage = re.match(r"stages\[(\d+)\]", key)
        if started_stages is not None and stage and int(stage.group(1)) >= started_stages:
            continue
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            diffs.append(f"{key}: {a.get(key, '<unset>')!r} in the checkpoint, {b.get(key, '<unset>')!r} now")
    return diffs
