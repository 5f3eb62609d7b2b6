"""The method plug-in contract and registry: a method is one class with its typed config.

``@register_method`` on a :class:`Method` subclass with ``name`` and ``config_class`` set makes it
a recipe's ``method: {name: ...}`` (validated against the config), a choice of ``compress
--method`` (its docstring's first line the help), and a section of the report (its ``metrics``
plotted per epoch, its :meth:`Method.report` tables).  Nothing else needs an edit.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from ..decision import Decision
from ..markdown import table
from ..recipe import BudgetConfig, MethodConfig, TrainConfig, register_method_config, unregister_method_config
from ..space import Space
from ..train import Stage, Trainer, TrainHooks
from ..train.trainer import Criterion

_METHODS: dict[str, type["Method"]] = {}


def register_method(cls: type["Method"]) -> type["Method"]:
    """Class decorator: make a method available by its ``name`` with its ``config_class``."""
    if not cls.name or cls.config_class is MethodConfig:
        raise ValueError(f"{cls.__name__} needs a name and its own config_class")
    if cls.config_class.model_fields["name"].default != cls.name:
        raise ValueError(f"{cls.config_class.__name__}.name must default to {cls.name!r}")
    register_method_config(cls.config_class)
    _METHODS[cls.name] = cls
    return cls


def unregister_method(name: str) -> None:
    """Forget a method (a plug-in registered for a while, as tests do)."""
    _METHODS.pop(name, None)
    unregister_method_config(name)


def get_method(name: str) -> type["Method"]:
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(_METHODS)}")
    return _METHODS[name]


def methods() -> dict[str, type["Method"]]:
    """Every registered method by name, in registration order."""
    return dict(_METHODS)


@dataclass
class SearchContext:
    """What a method's search may use: the trainer, the data, the budget, the seed and where the
    search stage checkpoints."""

    trainer: Trainer
    train_set: Dataset
    val_set: Dataset | None
    batch_size: int
    budget: BudgetConfig
    round_to: int | None
    seed: int
    num_classes: int | None = None
    criterion: Criterion | None = None  # the search stage's task loss (distillation), None = CE
    epochs: TrainConfig = field(default_factory=TrainConfig)  # the search stage's settings
    checkpoint: Any = None  # the search stage's checkpoint path (a Path), or None
    resume: bool = False
    variants: list[tuple[nn.Module, Space]] = field(default_factory=list)  # Method.model_variants, built

    def stage(self, name: str, **changes: Any) -> Stage:
        """A training stage on this context's data and settings (the search stage's unless changed;
        a stage other than ``search`` checkpoints beside it, as ``<name>.pt``)."""
        checkpoint = self.checkpoint
        if checkpoint is not None and name != "search":
            checkpoint = checkpoint.with_name(f"{name}.pt")
        spec = Stage(name, self.train_set, self.epochs, self.batch_size, val_set=self.val_set,
                     criterion=self.criterion, checkpoint=checkpoint, resume=self.resume)
        return dataclasses.replace(spec, **changes)

    def training_batches(self, n: int, device: torch.device | str | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``n`` shuffled training batches ``(x, y)`` on ``device`` (the trainer's by default),
        for scores measured on a few batches (block skipping, Taylor gradients)."""
        device = self.trainer.device if device is None else device
        for _, (x, y) in zip(range(n), self.trainer.loader(self.train_set, self.batch_size, shuffle=True)):
            yield x.to(device), y.to(device)


Baseline = Callable[[Dataset, int, float], dict]
"""``baseline(test_set, finetune_epochs, method_seconds) -> measurements``: a comparison run after
the pipeline (``grow``: its target trained from scratch for the same total epochs)."""


@dataclass
class SearchResult:
    """What a search hands the pipeline.

    Attributes:
        model: the full-size model with its trained weights (gates removed).
        decision: what to cut out of it.
        summary: facts for the report (JSON data).
        history: per-epoch rows of the search's training stages.
        carry: weights the decided model starts from (``grow``: the grown model's); None = the
            sliced weights of ``model``.
        baseline: an optional comparison run (see :data:`Baseline`).
    """

    model: nn.Module
    decision: Decision
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    carry: dict[str, Any] | None = None
    baseline: Baseline | None = None


class Method(TrainHooks):
    """A compression method.  ``search`` turns a (trained) model and its space into a decision;
    methods that train during search do it through the shared trainer with themselves as hooks.

    ``trains_in_search`` is False for one-shot methods: the pipeline then gives the search
    epochs to fine-tuning, so every method sees the same number of epochs.
    ``distills_by_default``: what ``distill.teacher: auto`` means for this method.
    ``trains_original`` is False for methods that never need the trained full model (``grow``
    trains its own seeds): the pipeline then skips the base stage.
    ``metrics``: the per-epoch search metrics the report plots.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    trains_in_search: ClassVar[bool] = True
    distills_by_default: ClassVar[bool] = False
    metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: MethodConfig, space: Space) -> None:
        """Bad settings for this space fail here, before any training."""
        self.config = config
        self.space = space

    @property
    def trains_original(self) -> bool:
        return True

    @classmethod
    def space_kinds(cls, choices: list[str]) -> list[str]:
        """The kinds of choice to trace for the recipe's ``choices`` (default: those)."""
        return list(choices)

    @classmethod
    def then_kinds(cls, choices: list[str]) -> list[str]:
        """Kinds of the recipe's ``choices`` pruned by weight importance on the decided model, after
        this method's own decision (methods/followup.py; default: none, every kind is searched)."""
        return []

    @classmethod
    def trace_options(cls, config: MethodConfig) -> dict[str, Any]:
        """Options for the kinds' ``find`` (the op kind's ``candidates``)."""
        return {}

    def min_search_epochs(self) -> int:
        """The fewest search epochs the method can work with (checked before any training)."""
        return 1 if self.trains_in_search else 0

    def model_variants(self) -> list[dict]:
        """``model_args`` changes of networks the search needs beside the run's own (P-DARTS's
        shallower stages): built and traced as the run's model is, before any training, and given
        to the search as :attr:`SearchContext.variants` in this order."""
        return []

    def search(self, model: nn.Module, ctx: SearchContext) -> SearchResult:
        raise NotImplementedError

    def fixed(self) -> Decision:
        """What the method decides regardless of the budget's other kinds (for the early budget
        check: the residual blocks it may remove, as removed)."""
        return Decision()

    def finalize(self, model: nn.Module, result: SearchResult, ctx: SearchContext) -> nn.Module:
        """The decided (sliced) model before its final training: ``result.carry`` loaded into it
        when there is one.  A method may re-initialise it."""
        if result.carry is not None:
            model.load_state_dict(result.carry)
        return model

    def finetune_config(self, finetune: TrainConfig, search: TrainConfig) -> TrainConfig:
        """The settings the decided model trains with in the fine-tune stage (default: the recipe's)."""
        return finetune

    def report(self, summary: dict[str, Any]) -> list[str]:
        """Markdown lines of the method's report section (default: its summary as tables)."""
        return table(summary)

    def plots(self, summary: dict[str, Any], out: Any) -> list[str]:
        """Plots of the method's own into the directory ``out``; their file names (default: none)."""
        return []
