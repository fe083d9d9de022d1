"""Feature adaptation: the conditioning methods the paper compares weight modulation with (Table 1).

``adapt(backbone, tasks, AdaptationConfig(kind=...))`` wraps an :class:`~instruct_ipt.models.IPTV2`'s
stages with PromptIR-style prompts (``prompt``), InstructIR-style task-conditioned gates
(``gating``) or a ControlNet-style control branch (``external``). One concept per module:
``condition`` (task vectors), ``modules`` (the adapters), ``adapt`` (wiring and the handle).
"""

from .adapt import KINDS, AdaptationConfig, TaskAdaptation, adapt, is_adaptation_key
from .condition import TaskCondition, TaskEmbedding, text_vectors
from .modules import ControlledEmbed, ControlledStage, ExternalControl, GatedStage, PromptBlock, PromptedStage

__all__ = [
    "KINDS",
    "AdaptationConfig",
    "ControlledEmbed",
    "ControlledStage",
    "ExternalControl",
    "GatedStage",
    "PromptBlock",
    "PromptedStage",
    "TaskAdaptation",
    "TaskCondition",
    "TaskEmbedding",
    "adapt",
    "is_adaptation_key",
    "text_vectors",
]
