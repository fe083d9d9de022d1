"""Training checkpoints: everything a killed run needs to continue as if it had never stopped."""

from __future__ import annotations

import contextlib
import pickle
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
#: what every checkpoint of the restoration trainer (``Trainer._state``) holds and its resumption reads
REQUIRED_KEYS = ("config", "stage", "step", "model_config", "model")
#: what ``np.random.get_state()``'s ndarray needs to load (checkpoints written before the rng state
#: went tensor-only hold one): ``_reconstruct`` under its numpy 1 and numpy 2 names, ndarray, and
#: the key's dtype (``numpy.dtypes.UInt32DType`` since numpy 1.25)
_multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
_LEGACY_NUMPY_GLOBALS = [(_multiarray._reconstruct, f"numpy.{m}.multiarray._reconstruct") for m in ("_core", "core")]
_LEGACY_NUMPY_GLOBALS += [np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def rng_state() -> dict[str, Any]:
    """Every RNG the run draws from, in types that a ``weights_only`` load accepts (numpy's state is
    split into a tensor and plain numbers rather than saved as its ndarray tuple)."""
    name, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": {"bit_generator": str(name), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` output, or the older form whose numpy state is ``np.random.get_state()``."""
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        key = numpy_state["key"].numpy().astype(np.uint32)
        numpy_state = (numpy_state["bit_generator"], key, numpy_state["pos"], numpy_state["has_gauss"],
                       numpy_state["gauss"])
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write atomically: a kill during the write leaves the previous checkpoint intact."""
    return atomic_write(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))


def load_checkpoint(path: str | Path, required: tuple[str, ...] = REQUIRED_KEYS) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint` holding the ``required`` keys (another trainer's,
    e.g. the diffusion one, names its own); anything else is a ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    try:
        # only tensors, containers and plain values, plus what the numpy arrays in checkpoints
        # written before the rng state went tensor-only need: nothing in the file can run code
        # (torch < 2.5 has no safe_globals: there such older checkpoints are refused)
        allow = getattr(torch.serialization, "safe_globals", None)
        with allow(_LEGACY_NUMPY_GLOBALS) if allow else contextlib.nullcontext():
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError, UnicodeDecodeError) as e:
        # (KeyError, ValueError: what torch's older-format reader raises on a file of other bytes, e.g. text)
        raise ValueError(f"{path} is not a safe instruct-ipt training checkpoint ({_load_error(e)}); "
                         "refusing to load it") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not an instruct-ipt training checkpoint")
    missing = [k for k in required if k not in state]
    if missing:
        raise ValueError(f"{path} is an incomplete training checkpoint (no {', '.join(missing)}): refusing to resume from it")
    return state


def _load_error(e: BaseException) -> str:
    """The gist of a failed ``torch.load``, on one line (torch's own message runs to a paragraph)."""
    text = str(e).strip()
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. |\n|$)", text)
    if detail:
        return detail.group(1).strip()
    return text.splitlines()[0] if text else type(e).__name__


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
