"""The method interface and registry: a typed config class selects the handler that runs it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn
from torch.utils.data import Dataset

from ..decision import Decision
from ..recipe import BudgetConfig, TrainConfig
from ..space import Space
from ..train import Trainer, TrainHooks
from ..train.trainer import Criterion

_METHODS: dict[str, type["Method"]] = {}


def register_method(name: str) -> Callable[[type["Method"]], type["Method"]]:
    def wrap(cls: type["Method"]) -> type["Method"]:
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def get_method(name: str) -> type["Method"]:
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


@dataclass
class SearchContext:
    """What a method's search may use: the trainer, the data, the budget and the seed."""

    trainer: Trainer
    train_set: Dataset
    val_set: Dataset | None
    batch_size: int
    budget: BudgetConfig
    round_to: int | None
    seed: int
    num_classes: int | None = None
    criterion: Criterion | None = None  # the search stage's task loss (distillation), None = CE


class Method(TrainHooks):
    """A compression method.  ``search`` turns a (trained) model and its space into a decision;
    methods that train during search do it through the shared trainer with themselves as hooks.

    ``trains_in_search`` is False for one-shot methods: the pipeline then gives the search
    epochs to fine-tuning, so every method sees the same number of epochs.
    ``distills_by_default``: what ``distill.teacher: auto`` means for this method.
    ``trains_original`` is False for methods that never need the trained full model (``grow``
    trains its own seeds): the pipeline then skips the base stage.
    """

    name = "method"
    trains_in_search = True
    distills_by_default = False
    trains_original = True

    def min_search_epochs(self) -> int:
        """The fewest search epochs the method can work with (checked before any training)."""
        return 1 if self.trains_in_search else 0

    def __init__(self, config, space: Space) -> None:
        self.config = config
        self.space = space

    def search(self, model: nn.Module, ctx: SearchContext, *, epochs_cfg, checkpoint=None,
               resume: bool = False) -> tuple[nn.Module, Decision, dict]:
        """Return (the model with its trained weights, the decision, a summary for the report)."""
        raise NotImplementedError

    def removable_blocks(self) -> list[str]:
        """The residual blocks this method's decision may remove (for the early budget check)."""
        return []

    def finalize(self, model: nn.Module) -> nn.Module:
        """The sliced model before its final training (a method may re-initialise it)."""
        return model

    def finetune_config(self, finetune: TrainConfig, search: TrainConfig) -> TrainConfig:
        """The settings the decided model trains with in the fine-tune stage (default: the recipe's)."""
        return finetune

    def baseline(self, ctx: SearchContext, test_set: Dataset, finetune_epochs: int,
                 method_seconds: float) -> dict | None:
        """Optionally train a comparison run after the pipeline (``grow``: the target from scratch
        for the same total epochs) and return what it measured; None when there is none.
        ``method_seconds`` is the wall-clock of the method's own search and fine-tune."""
        return None
