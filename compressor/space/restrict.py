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

    def kept_positions(units: np.ndarray) -> np.ndarray:
        return keep_ext[np.where(units >= 0, units, space.num_units)]

    def renumber(units: np.ndarray) -> np.ndarray:
        units = units[kept_positions(units)]
        return np.where(units >= 0, new_of_old[np.maximum(units, 0)], -1)

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
        dense = None
        if ps.dense is not None:
            dense = ps.dense
            mask = kept_positions(ps.dense)
            for d in range(dense.ndim):
                other = tuple(i for i in range(dense.ndim) if i != d)
                along = mask.any(axis=other) if other else mask
                dense, mask = np.take(dense, np.flatnonzero(along), axis=d), np.take(mask, np.flatnonzero(along), axis=d)
            dense = np.where(dense >= 0, new_of_old[np.maximum(dense, 0)], -1)
        slices[name] = ParamSlice(name, {d: renumber(u) for d, u in ps.dims.items()}, dense)
    gate_sites = [(name, d, renumber(u)) for name, d, u in space.gate_sites]
    norm_sites = [(name, kind, renumber(u), groups_) for name, kind, u, groups_ in space.norm_sites]
    sub = Space(groups, list(space.blocks), slices, gate_sites, [], [], np.zeros(0, dtype=np.int64),
                space.input_shapes, dict(space.skipped_owners), 0.0, norm_sites=norm_sites)
    return sub, old_units
