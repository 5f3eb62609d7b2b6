"""Importance scores over a :class:`Space`, and the one-shot decision they give under a budget
(the ``prune`` baseline's selection step).

A unit's score sums, over every parameter slice it owns (output rows of its producers, input
columns of its consumers, norm and free parameters), a per-element quantity: |w|^2 for magnitude,
|w * dL/dw| for Taylor (gradients must already be in ``.grad``).  A residual block's score is how
much the loss rises when the block is skipped (:func:`block_drop_loss`).
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .budget import fit_to_budget
from .gates.outputs import first_output
from .decision import Decision
from .gates import attach_gates
from .space import Space

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
    """Scores every flat unit of a space: ``__call__(model, space) -> float64 array``."""

    def element_score(self, p: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model: nn.Module, space: Space) -> np.ndarray:
        scores = np.zeros(space.num_units + 1)
        tensors = dict(model.named_parameters())
        for name, ps in space.param_slices.items():
            p = tensors.get(name)
            if p is None:
                continue
            s = self.element_score(p).detach().double().cpu().numpy()
            if ps.dense is not None:
                np.add.at(scores, np.where(ps.dense >= 0, ps.dense, space.num_units).ravel(), s.ravel())
            for d, units in ps.dims.items():
                per_pos = s.sum(axis=tuple(i for i in range(s.ndim) if i != d)) if s.ndim > 1 else s
                np.add.at(scores, np.where(units >= 0, units, space.num_units), per_pos)
        return scores[:-1]


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


def decision_from_scores(space: Space, scores: np.ndarray, target: float, *, what: str = "flops",
                         round_to: int | None = None) -> Decision:
    """Remove the lowest-scoring units (scores normalised by their group's mean) until the cost is
    at most ``target`` of the original; see :func:`compressor.budget.fit_to_budget`."""
    return fit_to_budget(space, scores, target, what=what, round_to=round_to, normalize=True)


@torch.no_grad()
def block_drop_loss(model: nn.Module, space: Space, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> np.ndarray:
    """Per residual block of ``space``: mean cross-entropy on ``batches`` with that block skipped,
    minus with every block kept (higher = more worth keeping).  ``model`` is evaluated as it is
    (train/eval mode, device) and left unchanged."""
    batches = list(batches)
    gates = attach_gates(model, space)
    try:
        def loss() -> float:
            return sum(float(F.cross_entropy(first_output(gates.model(x)).float(), y)) for x, y in batches) / len(batches)

        keep = torch.ones(len(space.blocks))
        base = loss()
        scores = np.zeros(len(space.blocks))
        for i in range(len(space.blocks)):
            gates.set(blocks=keep.index_fill(0, torch.tensor([i]), 0.0))
            scores[i] = loss() - base
        return scores
    finally:
        gates.remove()
