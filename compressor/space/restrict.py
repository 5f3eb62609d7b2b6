"""``restrict_space``: the space of a model sliced to some units, without tracing it again.

Slicing keeps the kept positions of every parameter in their order, so the sliced model's space
is the old one with the removed units' positions dropped and the units renumbered.  Used to gate a
sub-network (scs trains only the units its draw switched on, DESIGN 5.1) with the same gates the
whole model has.
"""
from __future__ import annotations

import numpy as np

from .space import ChannelGroup, ParamSlice, Space


def restrict_space(space: Space, keep: np.ndarray) -> tuple[Space, np.ndarray]:
    """Return the space of ``space``'s model sliced to the units where ``keep`` is True (blocks
    stay), and the old flat unit of every new unit.  Every group must keep a unit; the result
    carries no cost model (its cost terms are empty)."""
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (space.num_units,):
        raise ValueError(f"expected {space.num_units} keep flags, got {keep.shape}")
    old_units = np.flatnonzero(keep)
    new_of_old = np.full(space.num_units + 1, -1, dtype=np.int64)
    new_of_old[old_units] = np.arange(len(old_units))
    keep_ext = np.concatenate([keep, [True]])

    def renumber(units: np.ndarray) -> np.ndarray:
        return np.where(units >= 0, new_of_old[np.maximum(units, 0)], -1)

    def kept_units(units: np.ndarray) -> np.ndarray:
        """``units`` without the positions of removed units, renumbered."""
        return renumber(units[keep_ext[np.where(units >= 0, units, space.num_units)]])

    groups, offset = [], 0
    for g in space.groups:
        k = keep[g.offset:g.offset + g.size]
        if not k.any():
            raise ValueError(f"group {g.name!r} keeps no unit; a sub-network needs one in every group")
        groups.append(ChannelGroup(g.name, int(k.sum()), offset, g.channels[k], g.pinned[k], g.frozen,
                                   list(g.producers)))
        offset += int(k.sum())
    slices = {}
    for name, ps in space.param_slices.items():
        dense = ps.dense
        if dense is not None:  # cut as slicing cuts the tensor: a box of kept positions per dim
            for d, idx in ps.kept(keep_ext).items():
                dense = np.take(dense, idx, axis=d)
            dense = renumber(dense)
        slices[name] = ParamSlice(name, {d: kept_units(u) for d, u in ps.dims.items()}, dense)
    gate_sites = [(name, d, kept_units(u)) for name, d, u in space.gate_sites]
    norm_sites = [(name, kind, kept_units(u), groups_) for name, kind, u, groups_ in space.norm_sites]
    sub = Space(groups, list(space.blocks), slices, gate_sites, [], [],
                space.input_shapes, dict(space.skipped_owners), 0.0, norm_sites=norm_sites,
                standardised=space.standardised)
    return sub, old_units
