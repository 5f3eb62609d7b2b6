"""``restrict_space``: the space of a model sliced to some units, without tracing it again.

Slicing keeps the kept positions of every parameter in their order, so the sliced model's space
is the old one with the removed units' positions dropped and the units renumbered.  Used to gate a
sub-network (scs trains only the units its draw switched on, DESIGN 5.1) with the same gates the
whole model has.  Every other kind is unchanged; the cost terms are restricted the same way, so the
result's cost model prices the sub-network.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..space import Space
from ..space.cost import CONST, Factor, Term
from ..space.grouping import ParamSlice, UnitGateSite, UnitNormSite


def restrict_space(space: Space, keep: np.ndarray) -> tuple[Space, np.ndarray]:
    """Return the space of ``space``'s model sliced to the channel units where ``keep`` is True,
    and the old flat unit of every new unit.  Every group must keep a unit."""
    choices = space["channels"]
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (choices.size,):
        raise ValueError(f"expected {choices.size} keep flags, got {keep.shape}")
    old_units = np.flatnonzero(keep)
    new_of_old = np.full(choices.size + 1, -1, dtype=np.int64)
    new_of_old[old_units] = np.arange(len(old_units))
    keep_ext = np.concatenate([keep, [True]])

    def renumber(units: np.ndarray) -> np.ndarray:
        return np.where(units >= 0, new_of_old[np.maximum(units, 0)], -1)

    def kept_units(units: np.ndarray) -> np.ndarray:
        """``units`` without the positions of removed units, renumbered."""
        return renumber(units[keep_ext[np.where(units >= 0, units, choices.size)]])

    groups, offset = [], 0
    for g in choices.groups:
        k = keep[g.units]
        if not k.any():
            raise ValueError(f"group {g.name!r} keeps no unit; a sub-network needs one in every group")
        groups.append(dataclasses.replace(g, size=int(k.sum()), offset=offset, channels=g.channels[k],
                                          pinned=g.pinned[k], min_keep=min(g.min_keep, int(k.sum()))))
        offset += int(k.sum())
    slices = {}
    for name, ps in choices.param_slices.items():
        dense = ps.dense
        if dense is not None:  # cut as slicing cuts the tensor: a box of kept positions per dim
            for d, idx in ps.kept(keep_ext).items():
                dense = np.take(dense, idx, axis=d)
            dense = renumber(dense)
        slices[name] = ParamSlice(name, {d: kept_units(u) for d, u in ps.dims.items()}, dense)
    restricted = choices.replace(
        groups=tuple(groups), param_slices=slices,
        gate_sites=tuple(UnitGateSite(s.name, s.dim, kept_units(s.units)) for s in choices.gate_sites),
        norm_sites=tuple(UnitNormSite(s.name, s.kind, kept_units(s.units), s.groups) for s in choices.norm_sites))

    def term(t: Term) -> Term:
        factors = []
        for f in t.factors:
            if f.kind != "channels":
                factors.append(f)
                continue
            stay = (f.slots == CONST) | keep_ext[np.where(f.slots >= 0, f.slots, choices.size)]
            factors.append(Factor("channels", np.where(f.slots[stay] >= 0, renumber(f.slots[stay]), CONST),
                                  f.counts[stay]))
        return t.with_(factors=tuple(factors))

    sub = Space({**space, "channels": restricted}, [term(t) for t in space.flops_terms],
                [term(t) for t in space.param_terms], space.input_shapes, space.trace_seconds)
    return sub, old_units
