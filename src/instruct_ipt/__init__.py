"""instruct-ipt: all-in-one image restoration with task-modulated weights (Instruct-IPT)."""

from .model import DEFAULT_TASKS, CheckpointError, InstructIPT
from .models import IPTV2, IPTConfig
from .modulation import ModulationConfig, TaskModulation, modulate
from .pipeline import RestorationPipeline, Restored, TaskChoice
from .version import __version__

__all__ = [
    "DEFAULT_TASKS",
    "IPTV2",
    "CheckpointError",
    "IPTConfig",
    "InstructIPT",
    "ModulationConfig",
    "RestorationPipeline",
    "Restored",
    "TaskChoice",
    "TaskModulation",
    "__version__",
    "modulate",
]
