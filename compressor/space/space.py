"""The search space of one model: one immutable choice set per kind, built by one trace."""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import nn

from .cost import CostModel, Term
from .grouping import ChannelGrouping, group_channels
from .kinds import ChoiceSet, get_kind, kind_names
from .rules import rule_for
from .tracer import Trace, TraceError, run_trace

__all__ = ["Space", "TraceFindings", "build_space", "TraceError", "DEFAULT_KINDS"]

DEFAULT_KINDS = ("channels", "depth")


@dataclass
class TraceFindings:
    """What one trace found, for the kinds to find their sites in (``sets`` fills up in
    registration order, so a kind may read the sets of kinds registered before it)."""

    model: nn.Module
    example_inputs: tuple
    trace: Trace
    grouping: ChannelGrouping
    sets: dict[str, ChoiceSet] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


class Space(Mapping[str, ChoiceSet]):
    """What can change in a model: ``space[kind]`` is that kind's :class:`ChoiceSet` (sites and
    slots), in the order the kinds were registered.  Immutable: checks and rules return a new
    Space (:meth:`replace`).  Build it with :func:`compressor.trace`.

    Example:
        >>> space = compressor.trace(torchvision.models.resnet18(), (torch.randn(1, 3, 64, 64),))
        >>> [g.name for g in space["channels"].groups if g.prunable][:2]
        ['conv1', 'layer1.0.conv1']
        >>> float(space.cost.fraction("flops", {"depth": torch.zeros(len(space["depth"].blocks))}))
    """

    def __init__(self, choices: Mapping[str, ChoiceSet], flops_terms: list[Term], param_terms: list[Term],
                 input_shapes: Iterable[tuple[int, ...]], trace_seconds: float = 0.0) -> None:
        self._choices = dict(choices)
        self.flops_terms = list(flops_terms)
        self.param_terms = list(param_terms)
        self.input_shapes = [tuple(s) for s in input_shapes]
        self.trace_seconds = trace_seconds

    def __getitem__(self, kind: str) -> ChoiceSet:
        try:
            return self._choices[kind]
        except KeyError:
            raise KeyError(f"this space has no {kind!r} choices (it has {', '.join(self._choices) or 'none'})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._choices)

    def __len__(self) -> int:
        return len(self._choices)

    def replace(self, **choices: ChoiceSet) -> "Space":
        """A new Space with some kinds' choice sets replaced (the cost terms are shared)."""
        return Space({**self._choices, **choices}, self.flops_terms, self.param_terms, self.input_shapes,
                     self.trace_seconds)

    @cached_property
    def cost(self) -> CostModel:
        """The :class:`~compressor.space.cost.CostModel` of this space."""
        return CostModel(self)

    def refined_terms(self, terms: list[Term], what: str) -> list[Term]:
        """The ``what`` terms with every kind's slots worked in (the cost model's terms)."""
        for kind, choices in self.items():
            terms = get_kind(kind).refine_terms(choices, terms, what)
        return terms

    def sizes(self) -> dict[str, int]:
        """Slots per kind."""
        return {kind: choices.size for kind, choices in self.items()}


def build_space(model: nn.Module, example_inputs: tuple | torch.Tensor, *,
                kinds: Iterable[str] | None = None, **options: Any) -> Space:
    """Trace ``model`` once on ``example_inputs`` and return its :class:`Space`, unchecked
    (:func:`compressor.trace` also checks it against the model).

    ``kinds``: the kinds of choice to find (default ``DEFAULT_KINDS``), in registration order.
    The model runs in eval mode (its mode is restored).  Raises :class:`TraceError` naming the
    module and op when a forward pass cannot be followed.
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    wanted = list(DEFAULT_KINDS if kinds is None else kinds)
    unknown = [k for k in wanted if k not in kind_names()]
    if unknown:
        raise KeyError(f"unknown choice kind {unknown[0]!r}; known: {', '.join(kind_names())}")
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        tr, _ = run_trace(model, example_inputs, rule_for)
    finally:
        model.train(was_training)
    grouping = group_channels(tr, model)
    found = TraceFindings(model, example_inputs, tr, grouping, options=options)
    for kind in kind_names():
        if kind in wanted:
            found.sets[kind] = get_kind(kind).find(found)
    shapes = [tuple(x.shape) for x in example_inputs if isinstance(x, torch.Tensor)]
    return Space(found.sets, grouping.flops_terms, grouping.param_terms, shapes, time.perf_counter() - t0)
