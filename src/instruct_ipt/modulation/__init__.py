"""Weight modulation: per-task low-rank biases on the task-sensitive layers of any ``nn.Module``."""

from .layers import ModulatedConv2d, ModulatedLayer, ModulatedLinear, TaskSelection
from .modulate import (
    DEFAULT_TARGETS,
    TARGET_GROUPS,
    ModulationConfig,
    ParameterCount,
    TaskFreeze,
    TaskModulation,
    modulate,
    task_index,
)

__all__ = [
    "DEFAULT_TARGETS",
    "TARGET_GROUPS",
    "ModulatedConv2d",
    "ModulatedLayer",
    "ModulatedLinear",
    "ModulationConfig",
    "ParameterCount",
    "TaskFreeze",
    "TaskModulation",
    "TaskSelection",
    "modulate",
    "task_index",
]
