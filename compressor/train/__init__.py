"""The training backend: one device-agnostic loop that every method plugs into."""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .distributed import DistEnv
from .hooks import TrainHooks
from .trainer import DivergedError, EpochResult, Evaluation, Trainer

__all__ = ["CheckpointError", "DistEnv", "DivergedError", "EpochResult", "Evaluation", "TrainHooks", "Trainer", "load_checkpoint",
           "save_checkpoint"]
