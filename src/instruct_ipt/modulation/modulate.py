"""``modulate()``: give any ``nn.Module`` per-task low-rank weight biases, and the handle to drive them."""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .layers import (
    ModulatedConv2d,
    ModulatedLayer,
    ModulatedLinear,
    ReplacedConv2d,
    ReplacedLinear,
    TaskSelection,
)

#: Task-sensitive layer groups of the paper (names of :class:`~instruct_ipt.models.IPTV2`).
#: Not the image embedder, not norms, not depthwise convs.
TARGET_GROUPS: dict[str, tuple[str, ...]] = {
    "sampling": ("downsamples.*.conv", "upsamples.*.conv"),
    "reduction": ("reduces.*",),
    "output": ("output",),
    "qkv": ("*.attn.qkv", "*.grid.qkv"),
    "projection": ("*.attn.proj", "*.grid.proj"),
    "ffn": ("*.ffn.expand", "*.ffn.reduce"),
}
DEFAULT_TARGETS: tuple[str, ...] = tuple(p for group in TARGET_GROUPS.values() for p in group)
#: format tag of :meth:`TaskModulation.save_adapter` files
ADAPTER_FORMAT = "instruct-ipt-task-adapter"

Strategy = Literal["constant", "proportional"]
#: ``low-rank``: ``W + B1_t @ B2_t`` (the method); ``replace``: a full weight per task, no shared ``W``
Kind = Literal["low-rank", "replace"]
KINDS: tuple[str, ...] = ("low-rank", "replace")
TaskSpec = str | int | Sequence[str | int] | torch.Tensor


@dataclass(frozen=True)
class ModulationConfig:
    """How a model is modulated; saved in ``config.json``."""

    rank: int = 8
    #: ``constant``: every layer gets ``rank``; ``proportional``: round(proportion * min(out, in*k*k))
    strategy: Strategy = "constant"
    proportion: float = 0.05
    #: fnmatch patterns over qualified module names
    targets: tuple[str, ...] = DEFAULT_TARGETS
    #: ``low-rank`` (per-task biases on a shared weight) or ``replace`` (per-task full weights;
    #: rank, strategy and proportion then do not apply)
    kind: Kind = "low-rank"

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.kind not in KINDS:
            raise ValueError(f"unknown modulation kind {self.kind!r}; use one of: {', '.join(KINDS)}")
        if self.strategy not in ("constant", "proportional"):
            raise ValueError(f"unknown rank strategy {self.strategy!r}; use 'constant' or 'proportional'")
        if self.strategy == "constant" and self.rank < 1:
            raise ValueError("rank must be at least 1")
        if self.strategy == "proportional" and not 0 < self.proportion <= 1:
            raise ValueError("proportion must be in (0, 1]")

    def rank_for(self, weight: torch.Tensor) -> int:
        if self.strategy == "constant":
            return self.rank
        return max(1, round(self.proportion * min(weight.shape[0], weight[0].numel())))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModulationConfig:
        return cls(**d)


@dataclass
class ParameterCount:
    backbone: int
    per_task: int
    tasks: int
    layers: int
    ranks: dict[str, int] = field(default_factory=dict, repr=False)
    #: parameters of a feature adaptation (shared by all tasks; not counted in ``backbone``)
    adaptation: int = 0

    @property
    def share(self) -> float:
        """Extra parameters of one task as a fraction of the backbone."""
        return self.per_task / self.backbone if self.backbone else 0.0


def _wrap(module: nn.Module, num_tasks: int, rank: int, selection: TaskSelection, kind: Kind = "low-rank") -> ModulatedLayer:
    if kind == "replace":
        return ReplacedLinear(module, num_tasks, selection) if isinstance(module, nn.Linear) else ReplacedConv2d(module, num_tasks, selection)
    if isinstance(module, nn.Linear):
        return ModulatedLinear(module, num_tasks, rank, selection)
    return ModulatedConv2d(module, num_tasks, rank, selection)


def modulate(
    model: nn.Module,
    tasks: Sequence[str],
    rank: int = 8,
    targets: Sequence[str] | Callable[[str, nn.Module], bool] = DEFAULT_TARGETS,
    strategy: Strategy = "constant",
    proportion: float = 0.05,
    kind: Kind = "low-rank",
) -> TaskModulation:
    """Replace each targeted ``nn.Linear``/``nn.Conv2d`` of ``model`` (in place) by a modulated layer.

    ``kind="low-rank"`` adds per-task low-rank biases to the shared weight (the method);
    ``kind="replace"`` gives every task its own full weight instead (the paper's weight
    replacement baseline), each starting from the layer's current weight.

    ``targets`` are fnmatch patterns over qualified module names (``"*.attn.qkv"``), or a
    predicate ``(name, module) -> bool``. Every pattern must match at least one layer, so a typo
    fails loudly. Returns the :class:`TaskModulation` handle that selects tasks, merges, and
    groups parameters.
    """
    tasks = list(tasks)
    if not tasks:
        raise ValueError("modulate() needs at least one task")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"task names must be unique, got {tasks}")
    if any(isinstance(m, ModulatedLayer) for m in model.modules()):
        raise ValueError("model is already modulated")
    pattern_targets = not callable(targets)
    config = ModulationConfig(
        rank=rank, strategy=strategy, proportion=proportion, targets=tuple(targets) if pattern_targets else (), kind=kind
    )
    if pattern_targets:
        patterns = tuple(targets)

        def wanted(name: str, module: nn.Module) -> bool:
            return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    else:
        wanted = targets  # type: ignore[assignment]

    chosen = [
        (name, m)
        for name, m in model.named_modules()
        if name and isinstance(m, (nn.Linear, nn.Conv2d)) and wanted(name, m)
    ]
    if pattern_targets:
        unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n, _ in chosen)]
        if unmatched:
            raise ValueError(f"target patterns matched no Linear/Conv2d layer: {', '.join(unmatched)}")
    if not chosen:
        raise ValueError("no layer matched the modulation targets")

    selection = TaskSelection()
    for name, module in chosen:
        layer = _wrap(module, len(tasks), config.rank_for(module.weight), selection, kind)
        _set_submodule(model, name, layer)
    return TaskModulation(model, tasks, config, selection)


def task_index(tasks: Sequence[str], task: str | int) -> int:
    """The index of ``task`` (a name, or an index checked against the range) in ``tasks``.

    The one rule every task lookup follows: a ``bool`` is neither a name nor an index."""
    if isinstance(task, bool):
        # ValueError like every other bad task (callers and the CLI catch that one)
        raise ValueError(f"task {task!r}: a bool is not a task name or index")  # noqa: TRY004
    if isinstance(task, int):
        if not 0 <= task < len(tasks):
            raise ValueError(f"task index {task} out of range for {len(tasks)} tasks")
        return task
    if task not in tasks:
        raise ValueError(f"unknown task {task!r}; this model knows: {', '.join(tasks)}")
    return list(tasks).index(task)


def set_selection(selection: TaskSelection, names: Sequence[str], tasks: TaskSpec | None,
                  default: int | None = None) -> None:
    """Set ``selection`` from a task spec: None (``default``), one name/index, or one per sample
    (a sequence, or a 1-D tensor of indices, checked against ``names``: an id out of range is a
    ValueError for host ids in eager mode, else a RuntimeError from the device or compiled check)."""
    if tasks is None:
        selection.set(index=default)
    elif isinstance(tasks, (str, int)):
        selection.set(index=task_index(names, tasks))
    elif isinstance(tasks, torch.Tensor):
        ids = tasks.long().reshape(-1)
        in_range = ((ids >= 0) & (ids < len(names))).all()
        if ids.device.type == "cpu" and not torch.compiler.is_compiling():
            if not in_range:
                raise ValueError(f"task ids must be in [0, {len(names)}), got {ids.tolist()}")
        else:  # checked on the device, asynchronously: reading the result back would stall every step
            # (and in a compiled forward: a Python branch on the result would split its graph)
            torch._assert_async(in_range, f"task ids must be in [0, {len(names)})")
        selection.set(ids=ids)
    else:
        idx = [task_index(names, t) for t in tasks]
        if not idx:
            raise ValueError("empty task list")
        selection.set(ids=torch.tensor(idx, dtype=torch.long))


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


class TaskModulation:
    """Handle of a modulated model: task names, task selection, merging, parameter groups."""

    def __init__(self, model: nn.Module, tasks: list[str], config: ModulationConfig, selection: TaskSelection):
        self.model = model
        self.tasks = tasks
        self.config = config
        self.selection = selection

    # layers --------------------------------------------------------------------
    def layers(self) -> Iterator[tuple[str, ModulatedLayer]]:
        """Modulated layers by qualified name, in model order."""
        for name, m in self.model.named_modules():
            if isinstance(m, ModulatedLayer):
                yield name, m

    # task selection ----------------------------------------------------------------
    def task_index(self, task: str | int) -> int:
        """See the module-level :func:`task_index`."""
        return task_index(self.tasks, task)

    @contextlib.contextmanager
    def _restoring(self, previous: tuple[int | None, torch.Tensor | None]) -> Iterator[None]:
        try:
            yield
        finally:
            self.selection.set(*previous)

    def select(self, tasks: TaskSpec | None) -> contextlib.AbstractContextManager[None]:
        """Choose the task(s) of the next forward passes.

        ``tasks`` is one name/index for the whole batch, or a sequence / 1-D tensor with one
        name or index per sample (a mixed-task batch). Takes effect at once; used as a context
        manager it restores the previous selection on exit.
        """
        previous = (self.selection.index, self.selection.ids)
        set_selection(self.selection, self.tasks, tasks)
        return self._restoring(previous)

    # merging -------------------------------------------------------------------
    def merge(self, task: str | int) -> None:
        """Fold one task's biases into every layer's weight for zero-overhead inference."""
        t = self.task_index(task)
        for _, layer in self.layers():
            layer.merge(t)
        self.selection.set(index=t)

    def unmerge(self) -> None:
        for _, layer in self.layers():
            layer.unmerge()

    @property
    def merged_task(self) -> str | None:
        merged = {layer.merged_task for _, layer in self.layers()}
        if merged == {None}:
            return None
        (t,) = merged
        return None if t is None else self.tasks[t]

    def export_merged(self, task: str | int) -> nn.Module:
        """A deep copy of the model with plain layers holding ``W + delta[task]``: no modulation left."""
        t = self.task_index(task)
        plain = copy.deepcopy(self.model)
        for name, m in list(plain.named_modules()):
            if isinstance(m, ModulatedLayer):
                _set_submodule(plain, name, m.to_plain(t))
        return plain

    # tasks ---------------------------------------------------------------------
    def add_task(self, name: str) -> int:
        """Add a task whose biases start at zero effect; returns its index.

        The stacked parameters are replaced by longer ones, so build optimizers afterwards.
        """
        if name in self.tasks:
            raise ValueError(f"task {name!r} already exists")
        for _, layer in self.layers():
            layer.add_tasks(1)
        self.tasks.append(name)
        return len(self.tasks) - 1

    def remove_task(self, task: str | int) -> None:
        """Drop one task: its rows of every layer's biases, and its name. The other tasks keep
        their biases bit for bit; the tasks after it move down one index.

        Refused for the only task, and for the task the model is merged for (``unmerge()``
        first). The stacked parameters are replaced, so build optimizers (and any
        :class:`TaskFreeze`) afterwards. A selection of the removed task is cleared; one of a
        later task follows it down; per-sample ids are cleared (they index the old list)."""
        t = self.task_index(task)
        name = self.tasks[t]
        if len(self.tasks) == 1:
            raise ValueError(f"cannot remove task {name!r}: it is the model's only task")
        if self.merged_task == name:
            raise ValueError(f"cannot remove task {name!r}: the model is merged for it; call unmerge() first")
        for _, layer in self.layers():
            layer.remove_task(t)
        del self.tasks[t]  # in place: the model shares this list
        index = self.selection.index
        self.selection.set(index=None if index is None or index == t else index - (index > t))

    def task_state_dict(self, task: str | int) -> dict[str, torch.Tensor]:
        """One task's biases, keyed ``<layer>.task_B1`` / ``<layer>.task_B2`` (adapter-style; a
        replaced layer: ``<layer>.task_weight_stack``, the task's full weight)."""
        t = self.task_index(task)
        return {f"{name}.{pname}": p[t].detach().clone() for name, layer in self.layers() for pname, p in layer.task_parameters()}

    @torch.no_grad()
    def load_task_state_dict(self, task: str | int, state: dict[str, torch.Tensor]) -> None:
        """Set one task's biases from :meth:`task_state_dict` output; names and shapes must match."""
        t = self.task_index(task)
        expected = {f"{n}.{pname}": p for n, layer in self.layers() for pname, p in layer.task_parameters()}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                "task biases do not fit this model's modulated layers"
                + (f"; missing: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "") if missing else "")
                + (f"; unexpected: {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else "") if unexpected else "")
            )
        for key, param in expected.items():
            if tuple(state[key].shape) != tuple(param.shape[1:]):
                raise ValueError(
                    f"{key}: shape {tuple(state[key].shape)} does not match the model's {tuple(param.shape[1:])}"
                    " (different rank or layer size)"
                )
        for key, param in expected.items():
            param[t].copy_(state[key])

    def save_adapter(self, path: str | os.PathLike, task: str | int) -> Path:
        """One task's biases as a ``.safetensors`` file (atomically), with the task name and the
        modulation config, for any modulated module (``InstructIPT.save_adapter`` adds backbone checks)."""
        from ..io import save_tagged

        name = self.tasks[self.task_index(task)]
        meta = {"format": ADAPTER_FORMAT, "task": name, "modulation": json.dumps(self.config.to_dict(), sort_keys=True)}
        return save_tagged(path, self.task_state_dict(name), meta)

    def load_adapter(self, path: str | os.PathLike, task: str | None = None) -> str:
        """Load a task's biases written by :meth:`save_adapter` into ``task`` (default: the file's
        task, added when the module lacks it); returns the task name. The modulation config and the
        layers must match (names and shapes), else ``ValueError`` naming the difference."""
        from ..io import load_tagged

        state, meta = load_tagged(path, ADAPTER_FORMAT, "a task adapter of a modulated module")
        theirs = ModulationConfig.from_dict(json.loads(meta["modulation"]))
        if theirs != self.config:
            raise ValueError(f"{path} was made with another modulation: {theirs} vs this module's {self.config}")
        name = task or meta["task"]
        added = name not in self.tasks
        if added:
            self.add_task(name)
        try:
            self.load_task_state_dict(name, state)
        except ValueError:
            if added:
                self.remove_task(name)
            raise
        return name

    # parameter groups ------------------------------------------------------------
    def task_parameters(self) -> list[nn.Parameter]:
        """The stacked per-task parameters (one row per task in each): biases, or replaced weights."""
        return [p for _, layer in self.layers() for _, p in layer.task_parameters()]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Every parameter of the model that is not a task bias."""
        bias_ids = {id(p) for p in self.task_parameters()}
        return [p for p in self.model.parameters() if id(p) not in bias_ids]

    def freeze(self, train_tasks: Sequence[str | int] | None = None, train_backbone: bool = False) -> TaskFreeze:
        """Train only some tasks' biases (and optionally the backbone); keep the rest bit-identical.

        Returns a :class:`TaskFreeze`: build the optimizer from ``freeze.parameters`` and call
        ``freeze.attach(optimizer)`` (and ``freeze.mask_gradients()`` after each backward when you
        clip gradients, so that the frozen rows' gradients do not count). ``train_tasks=None``
        means all tasks.
        """
        rows = sorted({self.task_index(t) for t in (train_tasks if train_tasks is not None else self.tasks)})
        return TaskFreeze(self, rows, train_backbone)

    def parameter_count(self) -> ParameterCount:
        backbone = sum(p.numel() for p in self.backbone_parameters())
        per_task = sum(p[0].numel() for p in self.task_parameters())
        ranks = {name: layer.rank for name, layer in self.layers()}
        return ParameterCount(backbone=backbone, per_task=per_task, tasks=len(self.tasks), layers=len(ranks), ranks=ranks)


class TaskFreeze:
    """Freezes the backbone and/or some task rows of the stacked biases for a training phase.

    Frozen rows are protected twice: their gradients are zeroed before every optimizer step (so
    the optimizer's moments never see them; call :meth:`mask_gradients` after the backward for
    gradient clipping not to count them either) and, after every step, the rows are copied back
    from a snapshot (so weight decay, stale momentum or a non-finite step cannot move them). The
    result is bit-identical rows whatever the optimizer.

    Each of the two is one multi-tensor operation over all stacked parameters (``torch._foreach_*``),
    not one per parameter: a small model's training step on a GPU waits on the host's work per
    operation, and per-parameter hooks and copies were a fifth of the operations of a bias-only
    step of ``small`` (564 of 2,794; docs/training.md).
    """

    def __init__(self, modulation: TaskModulation, train_rows: list[int], train_backbone: bool) -> None:
        self.modulation = modulation
        self.train_rows = train_rows
        self.train_backbone = train_backbone
        bias = modulation.task_parameters()
        backbone = modulation.backbone_parameters()
        self._requires_grad = {id(p): p.requires_grad for p in bias + backbone}
        self._all = bias + backbone
        for p in backbone:
            p.requires_grad_(train_backbone)
        for p in bias:
            p.requires_grad_(True)
        n = len(modulation.tasks)
        frozen = [t for t in range(n) if t not in train_rows]
        self.frozen_rows = frozen
        self._bias = bias if frozen else []
        self._runs = _consecutive_runs(frozen)
        # the frozen rows' values, one tensor per run of consecutive frozen rows of each stacked parameter
        self._snapshots = [p.detach()[a:b].clone() for p in self._bias for a, b in self._runs]
        self._handles: list[Any] = []
        self._bind()
        self.parameters: list[nn.Parameter] = (backbone if train_backbone else []) + bias

    def _bind(self) -> None:
        """(Re)make what the two operations work on from the parameters' current memory: views of
        the frozen rows (dimension 0, so each is contiguous, and the optimiser's in-place updates
        keep it the parameter's memory) and a full-size 0/1 gradient mask per parameter (CUDA's
        multi-tensor kernels take operands of the same shape pair by pair; parameters of one shape
        share one). A model cast or moved after :meth:`TaskModulation.freeze` gives its parameters
        new memory, which both operations notice and bind to again."""
        n = len(self.modulation.tasks)
        self._pointers = [p.data_ptr() for p in self._bias]
        self._frozen_views = [p.detach()[a:b] for p in self._bias for a, b in self._runs]
        self._snapshots = [s.to(v.device, v.dtype) for s, v in zip(self._snapshots, self._frozen_views)]
        masks: dict[tuple, torch.Tensor] = {}
        self._masks = []
        for p in self._bias:
            key = (tuple(p.shape), p.dtype, p.device)
            if key not in masks:
                rows = torch.zeros(n, *([1] * (p.ndim - 1)), dtype=p.dtype, device=p.device)
                rows[self.train_rows] = 1
                masks[key] = rows.expand_as(p).contiguous()
            self._masks.append(masks[key])

    def _check_binding(self) -> None:
        if any(p.data_ptr() != ptr for p, ptr in zip(self._bias, self._pointers)):
            self._bind()

    def attach(self, optimizer: torch.optim.Optimizer, mask_gradients: bool = True) -> None:
        """Zero the frozen rows' gradients before each step of ``optimizer`` (``mask_gradients=False``:
        the caller calls :meth:`mask_gradients` after each backward itself); restore the rows after it."""
        if self.frozen_rows:
            if mask_gradients:
                self._handles.append(optimizer.register_step_pre_hook(lambda *_: self.mask_gradients()))
            self._handles.append(optimizer.register_step_post_hook(lambda *_: self.restore()))

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the frozen rows' gradients (after the backward, so that clipping does not count them)."""
        self._check_binding()
        pairs = [(p.grad, m) for p, m in zip(self._bias, self._masks) if p.grad is not None]
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the frozen rows back from their snapshot, bit for bit."""
        self._check_binding()
        if self._frozen_views:
            torch._foreach_copy_(self._frozen_views, self._snapshots)

    def release(self) -> None:
        """Remove hooks and give every parameter back its previous ``requires_grad``."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for p in self._all:
            p.requires_grad_(self._requires_grad[id(p)])


def _consecutive_runs(rows: list[int]) -> list[tuple[int, int]]:
    """Sorted row indices as half-open runs of consecutive rows: [0, 1, 3] -> [(0, 2), (3, 4)]."""
    runs: list[tuple[int, int]] = []
    for r in rows:
        if runs and runs[-1][1] == r:
            runs[-1] = (runs[-1][0], r + 1)
        else:
            runs.append((r, r + 1))
    return runs
