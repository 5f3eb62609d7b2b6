"""The training backend: one device-agnostic loop that every method plugs into."""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .distributed import DistEnv
from .hooks import TrainHooks
from .log import EpochResult
from .trainer import DivergedError, Evaluation, Stage, Trainer

__all__ = ["CheckpointError", "DistEnv", "DivergedError", "EpochResult", "Evaluation", "Stage", "TrainHooks", "Trainer",
           "load_checkpoint", "save_checkpoint"]
