"""instruct-ipt: all-in-one image restoration with task-modulated weights (Instruct-IPT)."""

__version__ = "0.1.0"

from .model import DEFAULT_TASKS, CheckpointError, InstructIPT
from .models import IPTV2, IPTConfig
from .modulation import ModulationConfig, TaskModulation, modulate

__all__ = [
    "DEFAULT_TASKS",
    "IPTV2",
    "CheckpointError",
    "IPTConfig",
    "InstructIPT",
    "ModulationConfig",
    "TaskModulation",
    "__version__",
    "modulate",
]
