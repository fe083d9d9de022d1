"""Modulated layers: a base ``nn.Linear``/``nn.Conv2d`` plus a low-rank bias per task.

For task ``t`` the layer computes with ``W + reshape(B1[t] @ B2[t])`` where ``B1`` is
``(tasks, out, r)`` and ``B2`` is ``(tasks, r, in/groups * k * k)``. Biases of all tasks live in
two stacked parameters (not one module per task) so every parameter takes part in every step,
which DistributedDataParallel requires even when a batch lacks some task.

``B1`` starts at zero, so a freshly modulated layer computes exactly its base layer. The base
layer is never modified: ``merge`` caches ``W + delta`` in a non-persistent buffer and
``unmerge`` drops it.

:class:`ReplacedLinear` / :class:`ReplacedConv2d` are the other modulation kind, the paper's
*weight replacement* (its Table 9): each task owns a full copy of the weight and there is no
shared ``W`` at all. They are modulated layers in every other respect (task selection, mixed
batches, merge, per-task freezing), so the trainer and the model handle both kinds alike.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn


class TaskSelection:
    """Which task the next forward uses, shared by every modulated layer of one model.

    Either one task index for the whole batch (``index``) or one index per sample (``ids``,
    a 1-D long tensor whose length is the batch size).
    """

    __slots__ = ("_ids_by_device", "_onehot", "ids", "index")

    def __init__(self) -> None:
        self.index: int | None = None
        self.ids: torch.Tensor | None = None
        self._ids_by_device: dict[tuple[torch.device, bool], torch.Tensor] = {}
        self._onehot: dict[tuple[torch.device, int, torch.dtype, bool], torch.Tensor] = {}

    def set(self, index: int | None = None, ids: torch.Tensor | None = None) -> None:
        self.index, self.ids = index, ids
        self._ids_by_device = {}
        self._onehot = {}

    def ids_on(self, device: torch.device) -> torch.Tensor:
        assert self.ids is not None
        if self.ids.device == device:
            return self.ids
        key = (device, _inference_mode())  # (a copy made under inference_mode cannot be saved for a backward)
        if key not in self._ids_by_device:
            self._ids_by_device[key] = self.ids.to(device, non_blocking=True)
        return self._ids_by_device[key]

    def onehot_on(self, device: torch.device, num_tasks: int, dtype: torch.dtype) -> torch.Tensor:
        """The ids as a ``(batch, num_tasks)`` one-hot matrix for :func:`pick`, built once per
        forward and shared by every layer: built per layer, it was three of the seven kernels a
        modulated layer launched in a mixed batch's forward (``small``: 303 of 1139), and on a GPU a
        small model's step waits on the host's work per operation (docs/training.md, "Kernel
        launches", measured on an H200)."""
        # (one built under inference_mode cannot be saved for a later training forward's backward, so
        # one built without gradients or under inference_mode is kept apart)
        key = (device, num_tasks, dtype, torch.is_grad_enabled(), _inference_mode())
        if key not in self._onehot:
            self._onehot[key] = one_hot(self.ids_on(device), num_tasks, dtype)
        return self._onehot[key]

    def __deepcopy__(self, memo: dict) -> TaskSelection:
        # A copied model gets its own selection, shared by the copied layers (memo keeps that).
        new = TaskSelection()
        new.set(self.index, None if self.ids is None else self.ids.clone())
        return new


def _inference_mode() -> bool:
    """Whether inference_mode is on - False while torch.compile traces, which cannot ask (asking
    split its graph at every modulated layer); a compiled forward under inference_mode with
    gradients enabled inside it is the one case this then misses."""
    return False if torch.compiler.is_compiling() else torch.is_inference_mode_enabled()


def one_hot(ids: torch.Tensor, num_tasks: int, dtype: torch.dtype) -> torch.Tensor:
    """``(len(ids), num_tasks)``: row ``i`` is 1 at column ``ids[i]``; an id out of range gives a zero row."""
    return (ids[:, None] == torch.arange(num_tasks, device=ids.device)).to(dtype)


def pick(stacked: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """``stacked[ids]`` for a few stacked task rows, as a one-hot matmul (``onehot``: :func:`one_hot`
    of the ids, :meth:`TaskSelection.onehot_on` in a forward).

    The same values as indexing, but the backward is a matmul too, where indexing's backward is
    an accumulating scatter (``index_put_``) that cost about a sixth of a CPU training step of
    ``small``. Ids out of range give zero rows here; :meth:`TaskModulation.select` refuses them.
    Under autocast it still picks in ``stacked``'s dtype (:func:`weights_at_full_precision`).
    """
    with weights_at_full_precision(stacked):
        return (onehot.to(stacked.dtype) @ stacked.flatten(1)).view(onehot.shape[0], *stacked.shape[1:])


def weights_at_full_precision(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off on ``t``'s device while a sample's weight is built from its task rows.

    Why: under autocast every matmul of that small arithmetic (``B1 @ B2``, the one-hot pick) cast
    its operands to bfloat16, and the backward cast their gradients - nine casts a mixed-batch
    pointwise layer where a plain layer has three (536 casts more in a ``small`` forward and backward
    under the CPU's autocast); each operation costs a GPU step's host tens of microseconds
    (docs/training.md, "Casts under autocast"). Built in float32, the weight is cast once, by the
    layer's own matmul or convolution, as autocast casts a plain layer's weight - and
    ``W + B1 @ B2`` is rounded to bfloat16 once.
    """
    dev = t.device.type
    # (a device type autocast does not know, such as meta, raises when asked)
    if torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
        return torch.autocast(dev, enabled=False)
    return contextlib.nullcontext()


class ModulatedLayer(nn.Module):
    """Common part of :class:`ModulatedLinear` and :class:`ModulatedConv2d`."""

    base_layer: nn.Module

    def __init__(self, base_layer: nn.Module, num_tasks: int, rank: int, selection: TaskSelection) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be at least 1, got {rank}")
        if num_tasks < 1:
            raise ValueError("a modulated layer needs at least one task")
        self.base_layer = base_layer
        self.rank = rank
        self.selection = selection
        w = base_layer.weight
        out_features = w.shape[0]
        fan_in = w[0].numel()  # in/groups * k * k
        self.task_B1 = nn.Parameter(torch.zeros(num_tasks, out_features, rank, device=w.device, dtype=w.dtype))
        self.task_B2 = nn.Parameter(self._init_B2(num_tasks, fan_in, w))
        self.merged_task: int | None = None
        self.register_buffer("merged_weight", None, persistent=False)

    def _init_B2(self, n: int, fan_in: int, like: torch.Tensor) -> torch.Tensor:
        # Same scale as a freshly initialised layer of this fan-in (kaiming-uniform, a=sqrt(5)).
        bound = 1.0 / math.sqrt(fan_in)
        return torch.empty(n, self.rank, fan_in, device=like.device, dtype=like.dtype).uniform_(-bound, bound)

    #: names of the per-task stacked parameters (first dimension: one row per task)
    task_parameter_names: tuple[str, ...] = ("task_B1", "task_B2")
    #: a dense kxk conv in a mixed batch runs as base conv + low-rank path (False: per-sample weights)
    low_rank_path = True

    @property
    def num_tasks(self) -> int:
        return self.task_B1.shape[0]

    def task_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The per-task stacked parameters by name: ``task_B1``, ``task_B2`` here."""
        return [(n, getattr(self, n)) for n in self.task_parameter_names]

    @property
    def weight(self) -> torch.Tensor:
        """The base weight W (never modified)."""
        return self.base_layer.weight

    @property
    def weight_shape(self) -> torch.Size:
        """The shape of one task's weight."""
        return self.weight.shape

    def delta_weight(self, task: int) -> torch.Tensor:
        """``B1[task] @ B2[task]`` in the shape of W (in the task rows' dtype under autocast too)."""
        with weights_at_full_precision(self.task_B1):
            return (self.task_B1[task] @ self.task_B2[task]).view_as(self.weight)

    def task_weight(self, task: int) -> torch.Tensor:
        return self.weight + self.delta_weight(task)

    def add_tasks(self, n: int = 1) -> None:
        """Append ``n`` task rows initialised to zero effect (B1 = 0)."""
        b1 = torch.zeros(n, *self.task_B1.shape[1:], device=self.task_B1.device, dtype=self.task_B1.dtype)
        b2 = self._init_B2(n, self.task_B2.shape[2], self.task_B2)
        self.task_B1 = nn.Parameter(torch.cat([self.task_B1.detach(), b1]))
        self.task_B2 = nn.Parameter(torch.cat([self.task_B2.detach(), b2]))

    def remove_task(self, index: int) -> None:
        """Drop task row ``index`` from the per-task parameters; the rows above it move down one.

        The other rows keep their exact values. The stacked parameters are replaced (as in
        :meth:`add_tasks`), so build optimizers afterwards."""
        n = self.num_tasks
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
            raise ValueError(f"task index {index!r} out of range for {n} tasks")
        if n == 1:
            raise ValueError("a modulated layer needs at least one task: cannot remove its only one")
        if self.merged_task == index:
            raise RuntimeError(f"layer is merged for task {index}; call unmerge() before removing it")
        for name in self.task_parameter_names:
            old = getattr(self, name)
            rows = torch.cat([old.detach()[:index], old.detach()[index + 1 :]])
            setattr(self, name, nn.Parameter(rows, requires_grad=old.requires_grad))
        if self.merged_task is not None and self.merged_task > index:
            self.merged_task -= 1

    @torch.no_grad()
    def merge(self, task: int) -> None:
        """Cache ``W + delta[task]`` so forward costs exactly one base-layer call."""
        self.merged_weight = self.task_weight(task).detach().clone()
        self.merged_task = task

    def unmerge(self) -> None:
        self.merged_weight = None
        self.merged_task = None

    def to_plain(self, task: int) -> nn.Module:
        """A copy of the base layer whose weight is ``W + delta[task]``."""
        import copy

        plain = copy.deepcopy(self.base_layer)
        with torch.no_grad():
            plain.weight.copy_(self.task_weight(task))
        return plain

    # forward -------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sel = self.selection
        if self.merged_weight is not None:
            if sel.ids is not None or (sel.index is not None and sel.index != self.merged_task):
                raise RuntimeError(
                    f"layer is merged for task {self.merged_task}; call unmerge() before running other tasks"
                )
            return self._forward_with_weight(x, self.merged_weight)
        if sel.index is not None:
            return self._forward_with_weight(x, self.task_weight(sel.index))
        if sel.ids is None:
            raise RuntimeError("no task selected for a modulated layer: pass tasks to the model's forward")
        ids = sel.ids_on(x.device)
        if ids.shape[0] != x.shape[0]:
            raise RuntimeError(
                f"{ids.shape[0]} task ids for a batch of {x.shape[0]}: modulated layers need dim 0 to index samples"
            )
        stack = getattr(self, self.task_parameter_names[0])  # (a replaced layer has no shared weight)
        return self._forward_mixed(x, sel.onehot_on(x.device, self.num_tasks, stack.dtype))

    def _sample_weights(self, onehot: torch.Tensor) -> torch.Tensor:
        """Each sample's full weight, ``(B, *W.shape)``: every task's weight is built once (one
        ``baddbmm`` over tasks, not samples) and then picked per sample, at W's precision."""
        w = self.weight
        # (autocast off: baddbmm adds W unrounded, and W's gradient sums over the tasks in W's dtype)
        with weights_at_full_precision(w):
            per_task = torch.baddbmm(w.reshape(1, w.shape[0], -1), self.task_B1, self.task_B2)
            return pick(per_task.view(-1, *w.shape), onehot)

    def _forward_with_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _forward_mixed(self, x: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"tasks={self.num_tasks}, rank={self.rank}"


class ModulatedLinear(ModulatedLayer):
    """``nn.Linear`` with per-task low-rank weight biases; input ``(B, ..., in)``."""

    def _forward_with_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, self.base_layer.bias)

    def _forward_mixed(self, x: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        w = self._sample_weights(onehot)  # (B, out, in)
        y = torch.bmm(x.reshape(b, -1, x.shape[-1]), w.transpose(1, 2))
        if self.base_layer.bias is not None:
            y = y + self.base_layer.bias
        return y.view(*x.shape[:-1], y.shape[-1])


class ModulatedConv2d(ModulatedLayer):
    """``nn.Conv2d`` with per-task low-rank weight biases; input ``(B, C, H, W)``.

    Mixed batches run batched, with no loop over samples: pointwise and grouped convs use each
    sample's full weight (a batched matmul, or one conv with ``B * groups`` groups); dense kxk
    convs add a low-rank path beside the shared base conv, which is cheaper on CPU than a
    grouped conv with per-sample kxk weights.
    """

    def _forward_with_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.base_layer._conv_forward(x, weight, self.base_layer.bias)

    def _forward_mixed(self, x: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        conv: nn.Conv2d = self.base_layer
        b = x.shape[0]
        pointwise = conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding in ((0, 0), "valid", "same")
        if conv.groups == 1 and not pointwise and self.low_rank_path:
            return self._forward_mixed_low_rank(x, onehot)
        # each sample's full weight W + B1[t] @ B2[t]; the same FLOPs as the base layer
        w = self._sample_weights(onehot)
        if conv.groups == 1 and pointwise:  # a batched matmul, in the input's memory layout
            if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1:
                h, wd = x.shape[2:]
                y = torch.bmm(x.permute(0, 2, 3, 1).reshape(b, h * wd, -1), w.view(b, w.shape[1], -1).transpose(1, 2))
                y = y.view(b, h, wd, -1).permute(0, 3, 1, 2)
            else:
                y = torch.bmm(w.view(b, w.shape[1], -1), x.flatten(2)).view(b, -1, *x.shape[2:])
            return y if conv.bias is None else y + conv.bias.view(1, -1, 1, 1)
        xp, padding = self._pad(x)  # grouped (e.g. depthwise), or replaced kxk: one conv with B * groups groups
        bias = None if conv.bias is None else conv.bias.repeat(b)
        y = F.conv2d(
            xp.reshape(1, -1, *xp.shape[2:]),
            w.reshape(-1, *self.weight_shape[1:]),
            bias,
            stride=conv.stride,
            padding=padding,
            dilation=conv.dilation,
            groups=b * conv.groups,
        )
        y = y.view(b, -1, *y.shape[2:])
        if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1:  # keep the model's layout
            y = y.contiguous(memory_format=torch.channels_last)
        return y

    def _forward_mixed_low_rank(self, x: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """Dense kxk conv: shared base conv, plus each sample's ``B2`` as a grouped conv to ``r``
        channels and its ``B1`` as a batched matmul (cheaper than per-sample full kxk weights)."""
        conv: nn.Conv2d = self.base_layer
        b = x.shape[0]
        base = conv(x)
        xp, padding = self._pad(x)
        h = F.conv2d(
            xp.reshape(1, -1, *xp.shape[2:]),
            pick(self.task_B2, onehot).reshape(b * self.rank, *self.weight.shape[1:]),
            stride=conv.stride,
            padding=padding,
            dilation=conv.dilation,
            groups=b,
        )
        low_rank = torch.bmm(pick(self.task_B1, onehot), h.view(b, self.rank, -1)).view(base.shape)
        if base.is_contiguous(memory_format=torch.channels_last):  # a channels-last model stays channels-last
            low_rank = low_rank.contiguous(memory_format=torch.channels_last)
        return base + low_rank

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int] | str]:
        conv: nn.Conv2d = self.base_layer
        if conv.padding_mode == "zeros":
            return x, conv.padding
        return F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode), (0, 0)


class ReplacedLayer(ModulatedLayer):
    """Weight replacement: a full weight per task, ``task_weight_stack[t]``, in place of ``W``.

    The stack is ``(tasks, out, in/groups * k * k)``, each row a task's weight flattened as the
    low-rank bias is (a 5-D stack would break ``model.to(memory_format=channels_last)``).

    Every task's weight starts as a copy of the base layer's weight, which is then removed from
    the base layer (so no shared weight is left to train or to save); the base layer's bias stays
    shared. ``rank`` reports the full rank of the weight, which is what a replacement amounts to.
    """

    task_parameter_names = ("task_weight_stack",)
    low_rank_path = False

    def __init__(self, base_layer: nn.Module, num_tasks: int, selection: TaskSelection) -> None:
        nn.Module.__init__(self)
        if num_tasks < 1:
            raise ValueError("a modulated layer needs at least one task")
        w = base_layer.weight
        self._weight_shape = w.shape
        self.task_weight_stack = nn.Parameter(w.detach().reshape(1, w.shape[0], -1).repeat(num_tasks, 1, 1))
        del base_layer.weight  # no shared weight: nothing trains or saves it
        self.base_layer = base_layer
        self.rank = min(w.shape[0], w[0].numel())
        self.selection = selection
        self.merged_task = None
        self.register_buffer("merged_weight", None, persistent=False)

    @property
    def num_tasks(self) -> int:
        return self.task_weight_stack.shape[0]

    @property
    def weight(self) -> torch.Tensor:
        # AttributeError, so hasattr(layer, "weight") is False (nn.Module re-raises it as "no attribute")
        raise AttributeError("a replaced layer has no shared weight: use task_weight(task)")

    @property
    def weight_shape(self) -> torch.Size:
        return self._weight_shape

    def delta_weight(self, task: int) -> torch.Tensor:
        raise AttributeError("a replaced layer has no shared weight, so no delta: use task_weight(task)")

    def task_weight(self, task: int) -> torch.Tensor:
        return self.task_weight_stack[task].view(self._weight_shape)

    @torch.no_grad()
    def load_shared_weight(self, weight: torch.Tensor) -> None:
        """Start every task from ``weight`` (a plain model's weight for this layer)."""
        if weight.shape != self._weight_shape:
            raise ValueError(f"weight of shape {tuple(weight.shape)} for a layer of {tuple(self._weight_shape)}")
        self.task_weight_stack.copy_(weight.to(self.task_weight_stack).reshape(1, *self.task_weight_stack.shape[1:]).expand_as(self.task_weight_stack))

    def add_tasks(self, n: int = 1) -> None:
        """Append ``n`` tasks, each starting from the mean of the existing tasks' weights."""
        start = self.task_weight_stack.detach().mean(0, keepdim=True).repeat(n, 1, 1)
        self.task_weight_stack = nn.Parameter(torch.cat([self.task_weight_stack.detach(), start]))

    def to_plain(self, task: int) -> nn.Module:
        import copy

        plain = copy.deepcopy(self.base_layer)
        plain.weight = nn.Parameter(self.task_weight(task).detach().clone())
        return plain

    def _sample_weights(self, onehot: torch.Tensor) -> torch.Tensor:
        return pick(self.task_weight_stack, onehot).view(onehot.shape[0], *self._weight_shape)

    def extra_repr(self) -> str:
        return f"tasks={self.num_tasks}, replaced weight {tuple(self._weight_shape)}"


class ReplacedLinear(ReplacedLayer, ModulatedLinear):
    """``nn.Linear`` with a full weight per task (weight replacement)."""


class ReplacedConv2d(ReplacedLayer, ModulatedConv2d):
    """``nn.Conv2d`` with a full weight per task (weight replacement)."""
