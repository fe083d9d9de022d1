"""Atomic file writes (a crash never leaves a half-written output or checkpoint), tagged
safetensors files, and the digest of a state dict (what a cached file was made from)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def save_tagged(path: str | os.PathLike, state: dict, metadata: dict[str, str]) -> Path:
    """Write tensors to a ``.safetensors`` file atomically, with string metadata (format tags)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


#: what reading a damaged ``.npz`` raises (empty, truncated, not a zip, a member failing its CRC):
#: a cache or walks file left by a killed copy or a full disk
NPZ_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict:
    """The tensors of a ``.safetensors`` file; a damaged or missing one is a ValueError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except (SafetensorError, FileNotFoundError) as e:  # truncated by a killed copy, or not safetensors at all
        raise ValueError(f"{path}: not a readable .safetensors file ({e})") from None


def load_tagged(path: str | os.PathLike, fmt: str, what: str) -> tuple[dict, dict[str, str]]:
    """Tensors and metadata of a ``.safetensors`` file whose ``format`` tag must be ``fmt``."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != fmt:
            raise ValueError(f"{path} is not {what}")
        return load_file(str(path)), meta
    except SafetensorError as e:  # a damaged or truncated file: the same one-line refusal as a file of another kind
        raise ValueError(f"{path} is not {what}: not a readable .safetensors file ({e})") from None


def state_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a state dict, by :func:`hash_state`: what a file made from some weights keys on."""
    h = hashlib.sha256()
    hash_state(h, state)
    return h.hexdigest()


def weights_digest(module: Any) -> str:
    """:func:`state_digest` of an ``nn.Module``'s state, floating-point tensors as float32: the same
    for the same weights on any device (a model loaded in float32 and moved to a GPU keeps it).
    What a file calibrated for a model records (blind mode's ``Peeling.model``)."""
    return state_digest({k: v.float() if v.is_floating_point() else v for k, v in module.state_dict().items()})


def hash_state(h: Any, state: Mapping[str, Any]) -> None:
    """Feed every tensor of ``state`` to the hash ``h`` (a ``hashlib`` object): name, dtype, shape
    and bytes, sorted by name - so a file cached from some weights (an ONNX graph, calibration
    walks) is never reused for others, whatever the tensors' layout in memory."""
    import torch

    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
