"""``slice_model``: apply a :class:`Decision` to a copy of a model, making it dense and smaller."""
from __future__ import annotations

import copy

from torch import nn

from ..decision import Decision
from ..space import Space
from ..space.kinds import get_kind


def slice_model(model: nn.Module, space: Space, decision: Decision, *, round_to: int | None = None) -> nn.Module:
    """Return a dense copy of ``model`` with the decision applied, kind by kind (each kind's
    ``cut``, in ``cut_order``): channels cut out of every parameter that reads or writes them,
    kernels cropped, removed residual blocks replaced by their skip path...

    ``round_to``: first grow every changed channel group to a multiple of that many channels.
    """
    if round_to:
        decision = decision.rounded(space, round_to)
    decision.validate(space)
    out = copy.deepcopy(model)
    for kind in sorted(space, key=lambda k: get_kind(k).cut_order):
        payload = decision.get(kind)
        if payload is not None:
            out = get_kind(kind).cut(out, space[kind], payload)
    return out
