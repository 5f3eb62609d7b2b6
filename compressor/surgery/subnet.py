"""``sub_network``: a dense copy of a model holding some of its units, and the way back.

A method whose gates hold still for a while (scs draws ``q`` once per epoch, DESIGN 5.1) can train
the sliced active network instead of the whole one with zeros in it: the sliced model computes
what the hard-gated one computes (invariant 2), at the cost of the kept units only.  Afterwards
:meth:`SubNetwork.scatter` puts every trained tensor back at its positions in the whole model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..decision import Decision
from ..space import Space
from .restrict import restrict_space
from .slice import slice_model

Index = list[tuple[int, torch.Tensor]]  # (dim, kept positions), in increasing dim order


@dataclass
class SubNetwork:
    """``module`` is the whole model sliced to the kept units (every block stays); ``space`` its
    space (same groups, gate and norm sites, units renumbered); ``old_units[i]`` the whole
    model's unit of its unit i; ``index[name]`` the kept positions of each cut tensor."""

    module: nn.Module
    space: Space
    old_units: np.ndarray
    index: dict[str, Index]

    def gather(self, name: str, whole: torch.Tensor) -> torch.Tensor:
        """The part of ``whole`` (a tensor shaped like the whole model's ``name``) kept here."""
        for d, idx in self.index.get(name, []):
            whole = whole.index_select(d, idx.to(whole.device))
        return whole

    @torch.no_grad()
    def scatter(self, name: str, whole: torch.Tensor, part: torch.Tensor) -> None:
        """Write ``part`` into ``whole`` at the kept positions of ``name`` (in place)."""
        _scatter(whole, part.to(whole.dtype), [(d, idx.to(whole.device)) for d, idx in self.index.get(name, [])])


def _scatter(whole: torch.Tensor, part: torch.Tensor, index: Index) -> None:
    if not index:
        whole.copy_(part)
        return
    (d, idx), rest = index[0], index[1:]
    rows = whole.index_select(d, idx)
    _scatter(rows, part, rest)
    whole.index_copy_(d, idx, rows)


def sub_network(model: nn.Module, space: Space, keep: np.ndarray) -> SubNetwork:
    """Slice ``model`` (plain: no gates attached) to the units where ``keep`` is True.  Every group
    must keep a unit, and pinned or frozen units must be kept."""
    keep = np.asarray(keep, dtype=bool)
    module = slice_model(model, space, Decision.from_keep(space, {"channels": keep}))
    sub_space, old_units = restrict_space(space, keep)
    keep_ext = np.concatenate([keep, [True]])
    index: dict[str, Index] = {}
    for name, ps in space["channels"].param_slices.items():
        found = ps.kept(keep_ext)
        if found:
            index[name] = [(d, torch.as_tensor(found[d], dtype=torch.long)) for d in sorted(found)]
    return SubNetwork(module, sub_space, old_units, index)
