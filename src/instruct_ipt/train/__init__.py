"""Training: typed YAML configs, the staged training loop, checkpoints, DDP, and ``add_task``."""

from .add_task import AddTaskError, AddTaskReport, add_task
from .config import ConfigError, TrainConfig, config_from_dict, load_config
from .trainer import Trainer, TrainingError, plan_stages, train

__all__ = ["AddTaskError", "AddTaskReport", "ConfigError", "TrainConfig", "Trainer", "TrainingError", "add_task",
           "config_from_dict", "load_config", "plan_stages", "train"]
