"""A model's main output, as is and with hard gates (what the checks compare)."""
from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import nn

from ..decision import Decision
from ..space import Space
from .attach import attach_gates


def first_output(out):
    """A model's main output: the first element of a tuple or list, the first value of a dict
    (torchvision's segmentation models return ``{"out": ..., "aux": ...}``)."""
    if isinstance(out, dict):
        return next(iter(out.values()))
    return out[0] if isinstance(out, (tuple, list)) else out


def gated_output(model: nn.Module, space: Space, decision: Decision | None, x: torch.Tensor | tuple,
                 only: Mapping[str, Collection[str]] | None = None) -> torch.Tensor:
    """Output of ``model`` on ``x`` (a tensor, or a tuple of positional inputs) with hard gates set
    from ``decision`` (all ones when None); ``only`` restricts the gates (see :func:`attach_gates`).
    The model is returned to its original state afterwards."""
    gates = attach_gates(model, space, only=only)
    try:
        if decision is not None:
            gates.set({kind: v.float() for kind, v in decision.values(space).items()})
        with torch.no_grad():
            return first_output(gates.model(*x) if isinstance(x, tuple) else gates.model(x))
    finally:
        gates.remove()
