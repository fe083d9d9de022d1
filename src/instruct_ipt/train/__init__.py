"""Training: typed YAML configs, the staged training loop, checkpoints, DDP."""

from .config import ConfigError, TrainConfig, config_from_dict, load_config
from .trainer import Trainer, TrainingError, plan_stages, train

__all__ = ["ConfigError", "TrainConfig", "Trainer", "TrainingError", "config_from_dict", "load_config", "plan_stages", "train"]
