"""``adapt()``: give an :class:`~instruct_ipt.models.IPTV2` one of the feature adaptations of the
paper's Table 1, and the handle that selects tasks and counts parameters."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from torch import nn

from ..modulation.modulate import TaskSpec, set_selection
from .condition import TaskCondition, TaskEmbedding, text_vectors
from .modules import ControlledEmbed, ControlledStage, ExternalControl, GatedStage, PromptedStage

Kind = Literal["prompt", "gating", "external"]
KINDS: tuple[str, ...] = ("prompt", "gating", "external")
Instruction = Literal["text", "learned"]
#: attribute of the backbone that holds an adaptation's shared modules (task embedding, control branch)
PREFIX = "adaptation_"


@dataclass(frozen=True)
class AdaptationConfig:
    """Which feature adaptation, saved in ``config.json``."""

    kind: Kind = "gating"
    #: the task vector (gating, external): ``text`` - each task's phrasings through the packaged
    #: MiniLM encoder (fixed) and a learned projection; ``learned`` - a learned vector per task
    instruction: Instruction = "text"
    #: width of the task vector
    dim: int = 64

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown adaptation {self.kind!r}; known: {', '.join(KINDS)}")
        if self.instruction not in ("text", "learned"):
            raise ValueError(f"adaptation instruction {self.instruction!r}: use 'text' or 'learned'")
        if self.dim < 1:
            raise ValueError("adaptation dim must be at least 1")

    @property
    def conditioned(self) -> bool:
        """Whether the adaptation reads the task (PromptIR's prompts are predicted from the features)."""
        return self.kind != "prompt"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AdaptationConfig:
        return cls(**d)


def is_adaptation_key(name: str) -> bool:
    """Whether a backbone state-dict key belongs to the adaptation rather than the backbone."""
    return name.startswith(PREFIX) or ".adapter." in name


def adapt(backbone: nn.Module, tasks: Sequence[str], config: AdaptationConfig, encode_text: bool = True) -> TaskAdaptation:
    """Wrap ``backbone``'s stages (in place) with ``config.kind``'s adapters; returns the handle.

    ``encode_text=False`` leaves the text vectors at zero for the saved weights to fill (loading a
    model needs no encoder)."""
    tasks = list(tasks)
    c = backbone.config
    widths = [c.dim * 2**i for i in range(c.levels + 1)]
    embedding = None
    if config.conditioned:
        text = text_vectors(tasks) if config.instruction == "text" and encode_text else None
        embedding = TaskEmbedding(len(tasks), config.dim, text, use_text=config.instruction == "text")
        setattr(backbone, PREFIX + "task", embedding)
    condition = TaskCondition(embedding)
    if config.kind == "gating":  # every encoder and decoder stage and the bottleneck
        for i in range(c.levels):
            backbone.encoders[i] = GatedStage(backbone.encoders[i], widths[i], config.dim, condition)
            backbone.decoders[i] = GatedStage(backbone.decoders[i], widths[i], config.dim, condition)
        backbone.bottleneck = GatedStage(backbone.bottleneck, widths[c.levels], config.dim, condition)
    elif config.kind == "prompt":  # each decoder level
        for i in range(c.levels):
            backbone.decoders[i] = PromptedStage(backbone.decoders[i], widths[i], size=max(4, 16 >> i))
    else:
        control = ExternalControl(backbone, widths, config.dim, condition)
        setattr(backbone, PREFIX + "control", control)
        backbone.embed = ControlledEmbed(backbone.embed, control)
        for i in range(c.levels):
            backbone.encoders[i] = ControlledStage(backbone.encoders[i], i, control)
    return TaskAdaptation(backbone, tasks, config, condition)


class TaskAdaptation:
    """Handle of an adapted backbone: task names, selection, and which parameters are the adaptation's."""

    def __init__(self, backbone: nn.Module, tasks: list[str], config: AdaptationConfig, condition: TaskCondition):
        self.backbone = backbone
        self.tasks = tasks
        self.config = config
        self.condition = condition
        self.fixed_task: int | None = None  # set by InstructIPT.merged(): the task of task-less calls

    def select(self, tasks: TaskSpec | None) -> contextlib.AbstractContextManager[None]:
        """The task(s) of the next forward: one for the batch or one per sample; as a context
        manager, restores the previous selection on exit."""
        sel = self.condition.selection
        previous = (sel.index, sel.ids)
        set_selection(sel, self.tasks, tasks, default=self.fixed_task)
        return self._restoring(previous)

    @contextlib.contextmanager
    def _restoring(self, previous) -> Iterator[None]:
        try:
            yield
        finally:
            self.condition.selection.set(*previous)

    def parameters(self) -> list[nn.Parameter]:
        """The adaptation's own parameters (adapters, task embedding, control branch)."""
        return [p for n, p in self.backbone.named_parameters() if is_adaptation_key(n)]
