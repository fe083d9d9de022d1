"""One task of a model as a plain image-to-image network in one file: safetensors, ONNX or TorchScript.

An exported file holds the backbone with one task's biases merged into its weights
(``W + B1[t] @ B2[t]``): no modulation code, no task argument, the backbone's cost. The graphs
(ONNX, TorchScript) are whole restorers: ``(N, 3, H, W)`` RGB in [0, 1] in, the same shape out,
for any ``H`` and ``W``. The padding to the model's size multiple happens inside the graph and
the output is cropped back, so a tool needs nothing but the file.

Why the attention layers are swapped for :class:`_TraceableWindowAttention` and
:class:`_TraceableGridAttention` here: both exporters trace one forward pass, and the eager layers
choose window sizes, padding, shifts and masks with Python ``min``/``if`` on the feature-map size
(fast for eager code, but a trace would freeze the choices made at the trace size). While tracing,
sizes are 0-dim tensors, so the swapped layers compute the same quantities with tensor ops that
the trace records (``torch.clamp``, ``torch.where``, slices for ``roll``, always padding by a
possibly-zero amount, always masking). They share the original layers' parameters and compute the NCHW formulas of
:mod:`instruct_ipt.models.blocks`, so results match the eager model at every size
(``tests/test_export.py`` traces at one size and checks others).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import io
import json
import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .inference import DEFAULT_OVERLAP, restore_with
from .io import atomic_write, hash_state, load_tagged, save_tagged
from .model import CONFIG_NAME, WEIGHTS_NAME, InstructIPT, default_model_dir
from .models import IPTV2, FocalContextAttention, GridAttention, IPTConfig
from .version import __version__

FORMATS = ("safetensors", "onnx", "torchscript")
#: ``format`` tag of a merged single-task safetensors file
MERGED_FORMAT = "instruct-ipt-merged"
ONNX_OPSET = 17
#: ONNX IR version written: IR 9 is read by onnxruntime >= 1.15 (newer exporters write 10)
ONNX_IR_VERSION = 9
#: side of the example image the graphs are traced with; any other size runs the same graph
TRACE_SIZE = 64


# --- traceable layers -----------------------------------------------------------------------------
def _size(n: int | torch.Tensor) -> torch.Tensor:
    """A feature-map size as a tensor: while tracing it already is one (so arithmetic is recorded)."""
    return n if isinstance(n, torch.Tensor) else torch.tensor(n)


def _arange_like(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """``torch.arange(n)`` on ``x``'s device. A traced ``arange`` would write the trace's device
    into the graph; ``ones_like`` follows its input, so the TorchScript file runs on any device."""
    return torch.ones_like(x[:1, :1, :1, :1].reshape(1), dtype=torch.long).expand(n).cumsum(0) - 1


def _ceil_div(a: torch.Tensor, b: int | torch.Tensor) -> torch.Tensor:
    return torch.div(a + b - 1, b, rounding_mode="floor")


def _roll(x: torch.Tensor, sh: torch.Tensor, sw: torch.Tensor) -> torch.Tensor:
    """``torch.roll(x, (sh, sw), (2, 3))`` with shifts known only at run time (the ONNX ``roll``
    symbolic needs constant shifts)."""
    h, w = _size(x.shape[2]), _size(x.shape[3])
    sh, sw = torch.remainder(sh, h), torch.remainder(sw, w)
    x = torch.cat([x[:, :, h - sh :], x[:, :, : h - sh]], dim=2)
    return torch.cat([x[:, :, :, w - sw :], x[:, :, :, : w - sw]], dim=3)


class _TraceableWindowAttention(nn.Module):
    """:class:`~instruct_ipt.models.FocalContextAttention` (NCHW formulas) with run-time sizes."""

    def __init__(self, attn: FocalContextAttention) -> None:
        super().__init__()
        self.heads, self.window_size, self.shift = attn.heads, attn.window_size, attn.shift
        self.qkv, self.qkv_dw, self.proj, self.temperature = attn.qkv, attn.qkv_dw, attn.proj, attn.temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d = x.shape[0], self.proj.out_channels, self.proj.out_channels // self.heads
        h, w = _size(x.shape[2]), _size(x.shape[3])
        qkv = self.qkv_dw(self.qkv(x))
        wh, ww = torch.clamp(h, max=self.window_size), torch.clamp(w, max=self.window_size)
        sh, sw = wh // 2, ww // 2  # used by shifted blocks only
        if self.shift:
            qkv = _roll(qkv, -sh, -sw)
        ph, pw = torch.remainder(-h, wh), torch.remainder(-w, ww)
        qkv = F.pad(qkv, (0, pw, 0, ph))
        nh, nw = (h + ph) // wh, (w + pw) // ww
        t = qkv.reshape(b, 3, self.heads, d, nh, wh, nw, ww)
        t = t.permute(1, 0, 4, 6, 2, 3, 5, 7).reshape(3, -1, self.heads, d, wh * ww)
        q, k, v = t.unbind(0)  # (groups, heads, d, tokens)
        q, k = F.normalize(q, dim=-1, eps=1e-12), F.normalize(k, dim=-1, eps=1e-12)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        out = (attn @ v).reshape(b, nh, nw, self.heads, d, wh, ww)
        out = out.permute(0, 3, 4, 1, 5, 2, 6).reshape(b, c, nh * wh, nw * ww)[:, :, :h, :w]
        return self.proj(_roll(out, sh, sw) if self.shift else out)


class _TraceableGridAttention(nn.Module):
    """:class:`~instruct_ipt.models.GridAttention` with run-time sizes: the grid, cell and block
    counts of ``GridAttention._split`` as tensors, padding and key mask always applied (a
    zero-amount pad and an all-true mask when the map fills its grid)."""

    def __init__(self, grid: GridAttention) -> None:
        super().__init__()
        self.heads, self.grid_size = grid.heads, grid.grid_size
        self.qkv, self.proj = grid.qkv, grid.proj

    def _split(self, n: torch.Tensor, span: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.clamp(n, max=self.grid_size)
        one, cells = torch.ones_like(n), _ceil_div(n, g)
        if span is None:
            return one, g, cells
        wide = n > span
        return (torch.where(wide, _ceil_div(n, span), one), torch.where(wide, torch.full_like(n, self.grid_size), g),
                torch.where(wide, torch.full_like(n, span // self.grid_size), cells))

    def forward(self, x: torch.Tensor, span: int | None = None) -> torch.Tensor:
        if span is not None and (span < self.grid_size or span % self.grid_size):
            raise ValueError(f"grid span {span} must be a multiple of the grid size {self.grid_size}")
        b, c, d = x.shape[0], self.proj.out_channels, self.proj.out_channels // self.heads
        h, w = _size(x.shape[2]), _size(x.shape[3])
        (nh, gh, ch), (nw, gw, cw) = self._split(h, span), self._split(w, span)
        hp, wp, tokens = nh * gh * ch, nw * gw * cw, gh * gw
        qkv = F.pad(self.qkv(x), (0, wp - w, 0, hp - h))
        t = qkv.reshape(b, 3, self.heads, d, nh, gh, ch, nw, gw, cw)
        q, k, v = t.permute(1, 0, 4, 6, 7, 9, 2, 5, 8, 3).reshape(3, -1, self.heads, tokens, d).unbind(0)
        rows = (_arange_like(x, hp) < h).reshape(nh, gh, ch).permute(0, 2, 1)
        cols = (_arange_like(x, wp) < w).reshape(nw, gw, cw).permute(0, 2, 1)
        # (nh, ch, nw, cw, gh, gw): for each group, which of its keys are real pixels
        valid = (rows[:, :, None, None, :, None] & cols[None, None, :, :, None, :]).reshape(1, -1, 1, 1, tokens)
        # scaled dot-product attention written out: the exporter's own SDPA turns float16 graphs into float32
        scores = (q @ k.transpose(-2, -1)) * d**-0.5
        scores = scores.reshape(b, -1, self.heads, tokens, tokens).masked_fill(~valid, float("-inf"))
        out = scores.softmax(dim=-1).reshape(-1, self.heads, tokens, tokens) @ v  # (groups, heads, tokens, d)
        out = out.reshape(b, nh, ch, nw, cw, self.heads, gh, gw, d).permute(0, 5, 8, 1, 6, 2, 3, 7, 4)
        return self.proj(out.reshape(b, c, hp, wp)[:, :, :h, :w])


def _pad_index(x: torch.Tensor, n: torch.Tensor, pad: torch.Tensor, reflect: torch.Tensor) -> torch.Tensor:
    """Source row (column) of each of the ``n + pad`` padded rows: reflect or replicate the last ones."""
    i = _arange_like(x, n + pad)
    mirrored = torch.where(reflect, 2 * (n - 1) - i, n - 1)
    return torch.where(i < n, i, mirrored)


class ExportedRestorer(nn.Module):
    """A merged, plain backbone as a whole restorer: ``(N, 3, H, W)`` in [0, 1] -> same shape.

    Pads the bottom and right to the backbone's size multiple exactly as
    :func:`~instruct_ipt.models.pad_to_multiple` does (reflect; replicate when the image is not
    larger than the pad), runs the backbone with its configured grid span, and crops back. The
    padding is a gather with run-time indices, so one traced graph serves every size.

    It takes ``backbone`` over (its attention layers are swapped for the traceable ones): pass a
    copy, as :func:`restorer` does.
    """

    def __init__(self, backbone: IPTV2) -> None:
        super().__init__()
        for name, m in list(backbone.named_modules()):
            if isinstance(m, (FocalContextAttention, GridAttention)):
                parent, _, attr = name.rpartition(".")
                swap = _TraceableWindowAttention(m) if isinstance(m, FocalContextAttention) else _TraceableGridAttention(m)
                setattr(backbone.get_submodule(parent), attr, swap)
        self.backbone = backbone
        self.multiple = backbone.config.size_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = _size(x.shape[2]), _size(x.shape[3])
        ph, pw = torch.remainder(-h, self.multiple), torch.remainder(-w, self.multiple)
        reflect = (ph < h) & (pw < w)
        xp = x.index_select(2, _pad_index(x, h, ph, reflect)).index_select(3, _pad_index(x, w, pw, reflect))
        return self.backbone(xp)[:, :, :h, :w]


# --- building and writing ------------------------------------------------------------------------
class MissingExportDependency(ImportError):
    """onnx or onnxruntime is not installed: the message says what to install."""


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as e:
        raise MissingExportDependency("ONNX export needs the onnx package: pip install 'instruct-ipt[export]'") from e
    return onnx


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise MissingExportDependency("the onnx engine needs onnxruntime: pip install 'instruct-ipt[export]'") from e
    return onnxruntime


def merged_backbone(model: InstructIPT, task: str | int) -> IPTV2:
    """A float32 CPU copy of the plain backbone with ``task`` merged in, configured with the task's
    grid span. An unknown task is the model's ``ValueError`` listing its tasks; the model is not changed."""
    return model.export_merged(task).float().cpu().eval().requires_grad_(False)


def restorer(model: InstructIPT, task: str | int, fp16: bool = False) -> ExportedRestorer:
    """The traceable whole restorer for ``task`` (float16 weights with ``fp16``)."""
    net = ExportedRestorer(merged_backbone(model, task)).eval()
    return net.half() if fp16 else net


def _example(fp16: bool) -> torch.Tensor:
    x = torch.rand(1, 3, TRACE_SIZE, TRACE_SIZE, generator=torch.Generator().manual_seed(0))
    return x.half() if fp16 else x


def _task_name(model: InstructIPT, task: str | int) -> str:
    return model.tasks[model.task_index(task)]


def _check_target(path: str | os.PathLike) -> Path:
    """An export is one file outside any model folder: the shipped folder is package data (an
    export there would be installed with the package), and a saved model's files must stay its own."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give a file name")
    parent = path.resolve().parent
    if parent == default_model_dir().resolve() or ((parent / CONFIG_NAME).is_file() and (parent / WEIGHTS_NAME).is_file()):
        raise ValueError(f"{path}: refusing to write into a model folder; choose a file elsewhere")
    return path


def export_safetensors(model: InstructIPT, task: str | int, path: str | os.PathLike, fp16: bool = False) -> Path:
    """The merged plain backbone's weights (float16 with ``fp16``: half the file), with the backbone
    config (JSON) and the task name in the metadata, so :func:`load_merged` needs nothing else."""
    path = _check_target(path)
    plain = merged_backbone(model, task)
    state = {k: (v.half() if fp16 and v.is_floating_point() else v) for k, v in plain.state_dict().items()}
    meta = {
        "format": MERGED_FORMAT,
        "version": __version__,
        "task": _task_name(model, task),
        "backbone": json.dumps(plain.config.to_dict(), sort_keys=True),
        "dtype": "float16" if fp16 else "float32",
    }
    return save_tagged(path, state, meta)


def load_merged(path: str | os.PathLike, dtype: torch.dtype | None = torch.float32) -> tuple[IPTV2, dict[str, str]]:
    """A plain :class:`~instruct_ipt.models.IPTV2` (eval mode) from a file written by
    :func:`export_safetensors`, and the file's metadata (``task``, ``backbone``, ``version``,
    ``dtype``). ``dtype=None`` keeps the stored dtype; float32, the default, is what CPUs run fast.
    Loading is strict: a file that does not fit its config is an error."""
    state, meta = load_tagged(path, MERGED_FORMAT, "a merged instruct-ipt export (instruct-ipt export --format safetensors)")
    try:
        net = IPTV2(IPTConfig.from_dict(json.loads(meta["backbone"])))
        net.load_state_dict(state, assign=True)  # assign: the stored tensors themselves, in their dtype
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # edited or mixed: its weights do not fit its config
        raise ValueError(f"{path}: a merged export whose weights do not fit its config ({str(e).splitlines()[0]})") from None
    return (net if dtype is None else net.to(dtype)).eval(), meta


def export_torchscript(model: InstructIPT, task: str | int, path: str | os.PathLike, fp16: bool = False) -> Path:
    """A traced :class:`ExportedRestorer`: ``torch.jit.load(path)(x)``, float16 in and out with ``fp16``."""
    path = _check_target(path)
    net = restorer(model, task, fp16)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the backbone's own checks; see the module docstring
        traced = torch.jit.trace(net, _example(fp16), check_trace=False)
    return atomic_write(path, lambda tmp: torch.jit.save(traced, tmp))


def onnx_bytes(model: InstructIPT, task: str | int, fp16: bool = False) -> bytes:
    """One task's ONNX graph: input ``input``, output ``output``, both ``(N, 3, H, W)`` with dynamic
    N, H and W; opset 17, weights inside, IR version <= 9; float16 weights, input and output with
    ``fp16`` (float32 otherwise). Checked with ``onnx.checker`` before it is returned."""
    onnx = _onnx()
    net = restorer(model, task, fp16)
    buf = io.BytesIO()
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter, chosen on purpose
        # dynamo=False: the TorchScript-based exporter (IR <= 9); torch < 2.5 has no other and no such argument
        legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        torch.onnx.export(net, (_example(fp16),), buf, opset_version=ONNX_OPSET, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": axes, "output": axes}, **legacy)
    proto = onnx.load_from_string(buf.getvalue())
    proto.ir_version = min(proto.ir_version, ONNX_IR_VERSION)
    proto.producer_name, proto.producer_version = "instruct-ipt", __version__
    proto.doc_string = (f"instruct-ipt, task {_task_name(model, task)}: RGB (N, 3, H, W) in [0, 1] -> same shape"
                        f"{' (float16)' if fp16 else ''}")
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_onnx(model: InstructIPT, task: str | int, path: str | os.PathLike, fp16: bool = False) -> Path:
    """Write :func:`onnx_bytes` to ``path`` atomically."""
    path = _check_target(path)
    data = onnx_bytes(model, task, fp16)

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(data)

    return atomic_write(path, write)


def export(model: InstructIPT, task: str | int, path: str | os.PathLike, fmt: str, fp16: bool = False) -> Path:
    """Export ``task`` of ``model`` to ``path`` as ``fmt`` (one of :data:`FORMATS`)."""
    writers = {"safetensors": export_safetensors, "onnx": export_onnx, "torchscript": export_torchscript}
    if fmt not in writers:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return writers[fmt](model, task, path, fp16)


# --- running exported graphs ---------------------------------------------------------------------
#: what runs a pipeline's tasks (``RestorationPipeline(engine=...)``, ``restore --engine``): "auto"
#: (onnxruntime for a float32 model on the CPU when onnx and onnxruntime import, else PyTorch),
#: "torch" (always PyTorch) or "onnx" (always onnxruntime; an error when it is not installed)
ENGINES = ("auto", "torch", "onnx")


def onnx_providers(device: torch.device) -> list[str]:
    """onnxruntime's providers for the device the model was asked to run on: CUDA (needs the
    onnxruntime-gpu build) for a CUDA device, else the CPU."""
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in _onnxruntime().get_available_providers():
        raise ValueError("--engine onnx on CUDA needs onnxruntime-gpu (this onnxruntime has no CUDA provider); "
                         "use --device cpu or --engine torch")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def onnx_available() -> bool:
    """Whether both onnx and onnxruntime import: what ``engine="auto"`` needs to pick onnxruntime."""
    try:
        _onnx()
        _onnxruntime()
    except MissingExportDependency:
        return False
    return True


def onnx_cache_dir() -> Path:
    """Where :class:`OnnxRestorer` keeps exported graphs: ``$INSTRUCT_IPT_CACHE/onnx``, else
    ``$XDG_CACHE_HOME/instruct-ipt/onnx``, else ``~/.cache/instruct-ipt/onnx``. Read at each use,
    so a test (or a user) can point it elsewhere at any time. Safe to delete: a missing graph is
    exported again."""
    own = os.environ.get("INSTRUCT_IPT_CACHE")
    if own:
        return Path(own).expanduser() / "onnx"
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():  # the XDG spec: a relative value is to be ignored
        return Path(xdg) / "instruct-ipt" / "onnx"
    return Path.home() / ".cache" / "instruct-ipt" / "onnx"


@functools.lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    """SHA-256 of the source that turns weights into a graph (this module, the backbone, the
    modulation, the model class). ``__version__`` changes only at releases, so without this an
    edited exporter in a development checkout would keep running graphs made by the old code."""
    root = Path(__file__).resolve().parent
    files = [root / "export.py", root / "model.py", *sorted((root / "models").glob("*.py")),
             *sorted((root / "modulation").glob("*.py"))]
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def onnx_cache_key(model: InstructIPT, task: str | int) -> str:
    """SHA-256 over everything the float32 graph of ``task`` depends on: package, torch, opset and
    IR versions, the exporting code, the task, the model config (JSON, sorted keys, with the per-task
    grid spans) and every tensor of the state dict (name, dtype, shape, bytes; sorted by name).

    Computed from the model as it is now (about 20 ms for the shipped model's 18 MiB of tensors), so weights
    changed in memory after loading, or a model folder overwritten in place, can never reuse an
    old graph."""
    h = hashlib.sha256()
    head = {"instruct_ipt": __version__, "torch": torch.__version__, "opset": ONNX_OPSET, "ir": ONNX_IR_VERSION,
            "code": _code_fingerprint(), "task": _task_name(model, task), "config": model.config_dict()}
    h.update(json.dumps(head, sort_keys=True).encode())
    hash_state(h, model.state_dict())
    return h.hexdigest()


#: graphs kept in the ONNX cache: a model's six tasks take about 86 MB (14 MB each for the shipped
#: model), and every new model, package, torch or exporter version makes new ones, so without a cap a
#: cache only grows. 30 is five such sets, about 430 MB.
ONNX_CACHE_GRAPHS = 30
#: the cache's own file names: :func:`onnx_cache_key` and the suffix
_CACHE_NAME = re.compile(r"[0-9a-f]{64}\.onnx")


class OnnxRestorer:
    """A model's tasks run through onnxruntime (``instruct-ipt restore --engine onnx``, or ``auto`` on a CPU).

    Each task's float32 graph is exported once and kept on disk in :func:`onnx_cache_dir` under
    :func:`onnx_cache_key`, so later commands start in well under a second instead of paying the
    export (seconds per task). The key covers the weights as they are at each :meth:`session` call,
    so a changed model gets a new graph, never a stale one. A cache file onnxruntime cannot read
    (truncated, damaged) is exported again and replaced; an unwritable cache directory costs one
    warning and the graph is kept in memory only. ``cache=False`` never touches the disk.
    The cache keeps the ``max_graphs`` graphs used most recently (a hit renews a file's time) and
    removes older ones after each export.
    ``on_export(task)`` is called just before an export really happens (the CLI says so on stderr:
    the first image of a task waits seconds longer). Tiling is the PyTorch path's
    (:func:`~instruct_ipt.inference.restore_with`), so both engines give the same pixels up to
    float rounding.
    """

    def __init__(self, model: InstructIPT, providers: Sequence[str] = ("CPUExecutionProvider",), cache: bool = True,
                 on_export: Callable[[str], None] | None = None, max_graphs: int = ONNX_CACHE_GRAPHS) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs: at least 1 (the graph just exported), got {max_graphs}")
        _onnx()  # missing onnx or onnxruntime: said at start, not after the first image
        self._ort = _onnxruntime()
        self.model = model
        self.providers = list(providers)
        self.cache = cache
        self.on_export = on_export
        self.max_graphs = max_graphs
        #: task name -> (cache key, session): one session per task, replaced when the weights change
        self._sessions: dict[str, tuple[str, Any]] = {}
        self._write_failed = False  # warned once: no more attempts to write in this restorer

    def _new_session(self, graph: bytes) -> Any:
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the threads PyTorch would use (OMP_NUM_THREADS)
        return self._ort.InferenceSession(graph, options, providers=self.providers)

    def _cached_session(self, path: Path) -> Any | None:
        """The session of a cached graph, or None when there is none or onnxruntime cannot load it."""
        try:
            graph = path.read_bytes()
        except OSError:  # not there (or unreadable): a miss
            return None
        try:
            session = self._new_session(graph)
        except Exception:  # noqa: BLE001 - onnxruntime's load errors (InvalidProtobuf, InvalidGraph, ...) share no other base
            return None
        names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        if names != (["input"], ["output"]):
            return None
        with contextlib.suppress(OSError):  # (a read-only cache still serves; it just ages)
            os.utime(path)  # used now: the last to be evicted
        return session

    def _store(self, path: Path, graph: bytes) -> None:
        """Write a graph into the cache atomically; an unwritable cache is a warning, not an error."""
        if self._write_failed:
            return

        def write(tmp: str) -> None:
            Path(tmp).write_bytes(graph)

        try:
            atomic_write(path, write)
        except OSError as e:
            self._write_failed = True
            warnings.warn(f"cannot write the ONNX cache in {path.parent} ({e}); the exported graphs are kept in "
                          "memory for this run only (set INSTRUCT_IPT_CACHE to a writable folder)", stacklevel=2)
            return
        self._evict(path)

    def _evict(self, kept: Path) -> None:
        """Remove all but the ``max_graphs`` most recently used graphs of ``kept``'s folder (never
        ``kept``, the one just written). Another process may remove or write files meanwhile: a file
        gone already is skipped, and a graph evicted while another command wanted it is exported again."""
        graphs = []
        for f in kept.parent.glob("*.onnx"):
            if not _CACHE_NAME.fullmatch(f.name):  # (a file of the user's own: not ours to remove)
                continue
            with contextlib.suppress(OSError):
                graphs.append((f == kept, f.stat().st_mtime_ns, f))
        graphs.sort(reverse=True)  # the one just written first, then the newest
        for _, _, f in graphs[self.max_graphs:]:
            with contextlib.suppress(OSError):
                f.unlink()

    def session(self, task: str | int) -> Any:
        """The onnxruntime session of ``task`` for the model's current weights: from memory, else
        from the disk cache, else exported (and cached)."""
        name = _task_name(self.model, task)
        key = onnx_cache_key(self.model, name)
        known = self._sessions.get(name)
        if known is not None and known[0] == key:
            return known[1]
        path = onnx_cache_dir() / f"{key}.onnx"
        session = self._cached_session(path) if self.cache else None
        if session is None:
            if self.on_export is not None:
                self.on_export(name)
            graph = onnx_bytes(self.model, name)
            session = self._new_session(graph)
            if self.cache:
                self._store(path, graph)
        self._sessions[name] = (key, session)
        return session

    def forward(self, task: str | int) -> Callable[[np.ndarray], np.ndarray]:
        """``(N, H, W, 3)`` float32 stack -> restored stack, through ``task``'s graph."""
        session = self.session(task)

        def run(batch: np.ndarray) -> np.ndarray:
            x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
            return session.run(["output"], {"input": x})[0].transpose(0, 2, 3, 1)

        return run

    def __call__(self, rgb: np.ndarray, task: str | int, tile: int | None = None, overlap: int = DEFAULT_OVERLAP,
                 progress: Callable[[int, int], None] | None = None, batch: int = 1) -> np.ndarray:
        """Restore a float32 ``(H, W, 3)`` image; the arguments of :func:`~instruct_ipt.inference.restore_array`."""
        return restore_with(self.forward(task), rgb, tile, overlap, progress, batch)
