"""Pruning that follows another decision in the same run (``choices: [op, channels]`` with
``darts``): the decided model is traced again and pruned by weight importance.

    target_1 = sqrt(target)                     the method's own budget: both steps keep the same share
    model_1 = the method's decided model, its trained weights loaded
    space_2 = trace(model_1, the kinds that follow)
    decision_2 = decide(space_2, magnitude scores, target * full(original) / full(space_2))
    model_2 = slice(model_1, space_2, decision_2)

The run's budget stays a fraction of the original's cost; a saved model replays the steps in
order (``compressor.json``'s ``then``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from ..budget import decide
from ..decision import Decision
from ..importance import get_importance
from ..space import Space
from ..space.kinds import get_kind
from ..surgery.slice import slice_model


class FollowUp(NamedTuple):
    """One pruning step after the method's decision: the space it was decided on, and the decision."""

    space: Space
    decision: Decision


def followable(kind: str) -> bool:
    """Whether ``kind`` can follow another decision (its slots are ranked by weight importance)."""
    return get_kind(kind).weight_scored


def first_target(target: float, then: Sequence[str]) -> float:
    """The method's own share of a run budget ``target`` when the kinds ``then`` prune after it
    (one step for all of them): the square root, so that both steps keep the same share."""
    return target ** 0.5 if then else target


def prune_after(model: nn.Module, example: torch.Tensor, kinds: list[str], target: float, full: float, *,
                what: str = "flops", round_to: int | None = None) -> tuple[nn.Module, FollowUp]:
    """``model`` (already decided) pruned over ``kinds`` by magnitude until it keeps ``target`` of
    ``full``, the original model's ``what``; returns the pruned model and the step."""
    from ..frontend import trace

    model = model.cpu().eval()
    space = trace(model, example, kinds=kinds)
    share = min(1.0, target * full / space.cost.full(what))
    decision = decide(space, get_importance("magnitude")(model, space), share, what=what, round_to=round_to)
    return slice_model(model, space, decision), FollowUp(space, decision)  # (decide rounded it)
