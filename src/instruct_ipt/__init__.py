"""instruct-ipt: all-in-one image restoration with task-modulated weights (Instruct-IPT)."""

__version__ = "0.1.0"

from .model import DEFAULT_TASKS, CheckpointError, InstructIPT  # noqa: E402
from .models import IPTV2, IPTConfig  # noqa: E402
from .modulation import ModulationConfig, TaskModulation, modulate  # noqa: E402

__all__ = [
    "__version__",
    "InstructIPT",
    "CheckpointError",
    "DEFAULT_TASKS",
    "IPTV2",
    "IPTConfig",
    "ModulationConfig",
    "TaskModulation",
    "modulate",
]
