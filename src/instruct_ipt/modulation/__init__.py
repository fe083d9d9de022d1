"""Weight modulation: per-task low-rank biases on the task-sensitive layers of any ``nn.Module``."""

from .layers import (
    ModulatedConv2d,
    ModulatedLayer,
    ModulatedLinear,
    ReplacedConv2d,
    ReplacedLayer,
    ReplacedLinear,
    TaskSelection,
)
from .modulate import (
    DEFAULT_TARGETS,
    KINDS,
    TARGET_GROUPS,
    ModulationConfig,
    ParameterCount,
    TaskFreeze,
    TaskModulation,
    modulate,
    task_index,
)
from .unet import UNET2D_TARGET_GROUPS, unet2d_targets

__all__ = [
    "DEFAULT_TARGETS",
    "KINDS",
    "TARGET_GROUPS",
    "UNET2D_TARGET_GROUPS",
    "ModulatedConv2d",
    "ModulatedLayer",
    "ModulatedLinear",
    "ModulationConfig",
    "ParameterCount",
    "ReplacedConv2d",
    "ReplacedLayer",
    "ReplacedLinear",
    "TaskFreeze",
    "TaskModulation",
    "TaskSelection",
    "modulate",
    "task_index",
    "unet2d_targets",
]
