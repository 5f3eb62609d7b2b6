"""Importance scores over a :class:`Space` (the ``prune`` baseline's ranking).

Each kind turns a per-element quantity into scores of its slots (a channel unit sums it over every
parameter slice it owns, a kernel ring over its positions): |w|^2 for magnitude, |w * dL/dw| for
Taylor (gradients must already be in ``.grad``).  A residual block's score is how much the loss
rises when the block is skipped (:func:`drop_loss`).
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .gates import attach_gates
from .gates.outputs import first_output
from .space import Space
from .space.kinds import get_kind

_IMPORTANCE: dict[str, type["Importance"]] = {}


def register_importance(name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        _IMPORTANCE[name] = cls
        return cls

    return wrap


def get_importance(name: str | "Importance") -> "Importance":
    """An importance by registered name (``"magnitude"``, ``"taylor"``) or the object itself."""
    if isinstance(name, Importance):
        return name
    if name not in _IMPORTANCE:
        raise ValueError(f"unknown importance {name!r}; known: {sorted(_IMPORTANCE)}")
    return _IMPORTANCE[name]()


class Importance:
    """Scores every slot of the kinds weights rank: ``__call__(model, space) -> {kind: scores}``,
    each kind's scores normalised so that 1 is the average (comparable across sites and kinds)."""

    def element_score(self, p: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model: nn.Module, space: Space) -> dict[str, np.ndarray]:
        return {kind: get_kind(kind).scores(model, choices, self.element_score)
                for kind, choices in space.items() if get_kind(kind).weight_scored}


@register_importance("magnitude")
class MagnitudeImportance(Importance):
    """Sum of squared weights (L2 magnitude of everything a unit owns)."""

    def element_score(self, p: torch.Tensor) -> torch.Tensor:
        return p.detach().float().square()


@register_importance("taylor")
class TaylorImportance(Importance):
    """First-order Taylor estimate |w * dL/dw| (call after ``loss.backward()``)."""

    def element_score(self, p: torch.Tensor) -> torch.Tensor:
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        return (p.detach().float() * grad.float()).abs()


def loss_scored_kinds(space: Space) -> list[str]:
    """The kinds of ``space`` whose slots a loss ranks, not their weights (residual blocks): each
    slot's score is what removing it alone costs (:func:`drop_loss`)."""
    return [k for k in space if not get_kind(k).weight_scored and not get_kind(k).one_of]


@torch.no_grad()
def drop_loss(model: nn.Module, space: Space, kind: str,
              batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> np.ndarray:
    """Per slot of ``kind``: mean cross-entropy on ``batches`` with that slot alone removed, minus
    with every slot kept (higher = more worth keeping).  ``model`` is evaluated as it is
    (train/eval mode, device) and left unchanged."""
    batches = list(batches)
    gates = attach_gates(model, space)
    try:
        def loss() -> float:
            return sum(float(F.cross_entropy(first_output(gates.model(x)).float(), y)) for x, y in batches) / len(batches)

        n = space[kind].size
        keep = torch.ones(n)
        base = loss()
        scores = np.zeros(n)
        for i in range(n):
            gates.set({kind: keep.index_fill(0, torch.tensor([i]), 0.0)})
            scores[i] = loss() - base
        return scores
    finally:
        gates.remove()
