"""Channel groups from a trace: the tracer's atoms joined into units and groups, and every record
that reads channels (parameter slices, gate and norm sites, reshapes, splits, cost terms) resolved
from atoms to units.  The ``channels`` kind is built from this; the cost terms of every kind start
from the channel factors resolved here.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from .cost import Factor, Term
from .dsu import DisjointSets
from .records import CostTerm, ReshapeSite, SplitSite
from .tracer import Trace, TraceError

REACHES_OUTPUT = "reaches the model output"
"""The frozen reason of a group the model's output reads: its units are the output's, not the model's."""


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels that must be removed together, split into *units* (the smallest removable
    pieces: one channel, or one whole group of a grouped conv).

    Attributes:
        name: the first producer's module name, e.g. ``"layer1.0.conv1"``.
        size: number of units.
        offset: index of unit 0 in the flat unit vector of the ``channels`` kind.
        channels: channels of the first producer per unit (1 for plain channels).
        pinned: units that can never go (they reach the model output).
        frozen: why the group cannot be changed at all, or None.
        producers: names of the parameters whose output channels the group spans.
        min_keep: units a decision must keep (a recipe rule's ``min_keep``), at least 1.
    """

    name: str
    size: int
    offset: int
    channels: np.ndarray
    pinned: np.ndarray
    frozen: str | None = None
    producers: tuple[str, ...] = ()
    min_keep: int = 1

    @property
    def prunable(self) -> bool:
        return self.frozen is None

    @property
    def units(self) -> slice:
        """This group's positions in the flat unit vector."""
        return slice(self.offset, self.offset + self.size)


@dataclass
class ParamSlice:
    """How to cut one parameter/buffer: per dim, the flat unit index of each position (-1: keep)."""

    name: str
    dims: dict[int, np.ndarray] = field(default_factory=dict)
    dense: np.ndarray | None = None  # unit index per element, for free-standing parameters

    def kept(self, keep_ext: np.ndarray) -> dict[int, np.ndarray]:
        """Kept positions of every dim that loses some, for the keep flags ``keep_ext`` (one per
        flat unit, then True for "not a unit").  Raises ValueError when the kept elements of a
        free-standing parameter do not form a box (it could not be cut densely)."""
        index: dict[int, np.ndarray] = {}
        for d, units in self.dims.items():
            mask = keep_ext[np.where(units >= 0, units, len(keep_ext) - 1)]
            if not mask.all():
                index[d] = np.flatnonzero(mask)
        if self.dense is not None:
            mask = keep_ext[np.where(self.dense >= 0, self.dense, len(keep_ext) - 1)]
            if not mask.all():
                for d in range(mask.ndim):
                    other = tuple(i for i in range(mask.ndim) if i != d)
                    along = mask.any(axis=other) if other else mask
                    if not along.all():
                        index[d] = np.flatnonzero(along)
                box = mask
                for d, idx in index.items():
                    box = np.take(box, idx, axis=d)
                if not box.all() or int(mask.sum()) != box.size:
                    raise ValueError(f"kept elements of '{self.name}' do not form a box; it cannot be cut densely")
        return index


@dataclass(frozen=True)
class UnitGateSite:
    """A consumer weight ``name`` whose positions along ``dim`` belong to the units ``units``."""

    name: str
    dim: int
    units: np.ndarray


@dataclass(frozen=True)
class UnitNormSite:
    """A normalisation over channels with affine weight ``name`` (``kind``, GroupNorm ``groups``)."""

    name: str
    kind: str
    units: np.ndarray
    groups: int = 1


@dataclass
class ChannelGrouping:
    """A trace's channels resolved into units and groups, with every record that reads them."""

    groups: list[ChannelGroup]
    param_slices: dict[str, ParamSlice]
    gate_sites: list[UnitGateSite]
    norm_sites: list[UnitNormSite]
    reshapes: list[ReshapeSite]
    splits: list[SplitSite]
    standardised: frozenset[str]
    flops_terms: list[Term]
    param_terms: list[Term]


def group_channels(tr: Trace, model: nn.Module) -> ChannelGrouping:
    """Join the trace's atoms into units and groups and resolve every channel record to units."""
    roots = tr.ds.roots()
    tr.ds = None  # ``roots`` is all that is left of it
    groups, unit_of_root = _groups(tr, roots)
    unit_of_atom = unit_of_root[roots]
    del roots, unit_of_root

    def to_units(atoms: np.ndarray) -> np.ndarray:
        atoms = np.asarray(atoms, dtype=np.int64)
        units, has = np.full(atoms.shape, -1, dtype=np.int64), atoms >= 0  # -1: a channel of the raw input
        units[has] = unit_of_atom[atoms[has]]
        return units

    param_slices: dict[str, ParamSlice] = {}
    for pd in tr.param_dims:
        ps = param_slices.setdefault(pd.name, ParamSlice(pd.name))
        u = to_units(pd.atoms)
        if pd.dim in ps.dims and not np.array_equal(ps.dims[pd.dim], u):
            raise TraceError(f"parameter '{pd.name}' is used with two different channel layouts")
        ps.dims[pd.dim] = u
    for name, dp in tr.dense_params.items():
        param_slices.setdefault(name, ParamSlice(name)).dense = _broadcast(to_units, dp.atoms)
    gate_sites = _unique([UnitGateSite(gs.name, gs.dim, to_units(gs.atoms)) for gs in tr.gate_sites],
                         lambda s: (s.name, s.dim, s.units.tobytes()))  # a module applied twice: tied gates
    norm_sites = _unique([UnitNormSite(ns.name, ns.kind, to_units(ns.atoms), ns.groups) for ns in tr.norm_sites],
                         lambda s: (s.name, s.units.tobytes()))
    splits = [SplitSite(sp.module, sp.sizes, to_units(sp.atoms)) for sp in tr.splits]
    reshapes = [ReshapeSite(r.module, r.shape, r.varying, to_units(r.atoms), r.module_type) for r in tr.reshapes]
    flops_terms = [_resolve(t, to_units, tr) for t in tr.costs]
    return ChannelGrouping(groups, param_slices, gate_sites, norm_sites, reshapes, splits,
                           frozenset(tr.standardised_params), flops_terms, _param_terms(model, param_slices))


def _unique(items: list, key) -> list:
    seen, out = set(), []
    for it in items:
        k = key(it)
        if k not in seen:
            seen.add(k)
            out.append(it)
    return out


def _groups(tr, roots: np.ndarray) -> tuple[list[ChannelGroup], np.ndarray]:
    """The channel groups: units (roots of atoms) joined by sharing a producer, groups and units
    ordered by first producer; and the flat unit index of every root (-1 for none)."""
    grouping = DisjointSets()  # a second union-find, over the roots
    grouping.new(len(roots))
    for prod in tr.producers:
        grouping.union_all(roots[prod.atoms])
    units_by_group, names_by_group, channels = _units_by_group(tr, roots, grouping)
    merge_reasons: dict[int, list[str]] = defaultdict(list)
    for m in tr.merges:
        r = roots[m.atoms[:1]]
        if len(r):
            reason = f"{m.op.replace('aten.', '').split('.')[0]} in '{m.module or '<root>'}'"
            reasons = merge_reasons[int(grouping.find(r)[0])]
            if reason not in reasons:
                reasons.append(reason)
    del grouping
    pinned_roots, output_roots = np.unique(roots[tr.pinned]), np.unique(roots[tr.output_pinned])
    unit_of_root = np.full(len(roots), -1, dtype=np.int64)
    groups: list[ChannelGroup] = []
    used_names: set[str] = set()
    offset = 0
    for gid, parts in units_by_group.items():  # dicts keep insertion order: first producer first
        units = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        pinned = np.isin(units, pinned_roots)
        count = np.maximum(channels[units], 1).astype(np.int64)
        if len(units) > 1 and pinned.all():
            # Nothing can remove any part of it: one unit (a float buffer read whole, such as an
            # attention mask, would otherwise hold one unit per element).
            unit_of_root[units] = offset
            count, pinned = count.sum(keepdims=True), pinned[:1]
        else:
            unit_of_root[units] = offset + np.arange(len(units))
        frozen = None
        if pinned.all():
            frozen = REACHES_OUTPUT if np.isin(units, output_roots).any() else \
                "every channel is the first of a split or reshape part (one must stay in each)"
        elif len(units) < 2:
            frozen = f"channels are tied together by {'; '.join(merge_reasons[gid][:3]) or 'a single channel'}"
        name = _unique_name(_module_of(names_by_group[gid][0]), used_names)
        groups.append(ChannelGroup(name, len(pinned), offset, count, pinned, frozen, tuple(names_by_group[gid])))
        offset += len(pinned)
    return groups, unit_of_root


def _units_by_group(tr, roots: np.ndarray, grouping: DisjointSets):
    """Per group (by its root in ``grouping``): its units in first-seen order, its producers'
    names, and per root the channels of its group's first producer."""
    units_by_group: dict[int, list[np.ndarray]] = {}
    names_by_group: dict[int, list[str]] = defaultdict(list)
    channels = np.zeros(len(roots), dtype=np.int32)
    seen = np.zeros(len(roots), dtype=bool)
    for prod in tr.producers:
        r = roots[prod.atoms]
        if len(r) == 0:
            continue
        gid = int(grouping.find(r[:1])[0])
        units_by_group.setdefault(gid, [])
        if prod.name not in names_by_group[gid]:
            names_by_group[gid].append(prod.name)
        new = r[~seen[r]]
        if len(new):
            _, first_at = np.unique(new, return_index=True)
            new = new[np.sort(first_at)]
            seen[new] = True
            units_by_group[gid].append(new)
        if names_by_group[gid] == [prod.name]:
            np.add.at(channels, r, 1)
    return units_by_group, names_by_group, channels


def _unique_name(base: str, used: set[str]) -> str:
    name, k = base, 1
    while name in used:
        k += 1
        name = f"{base}~{k}"
    used.add(name)
    return name


def _stored(a: np.ndarray) -> np.ndarray:
    """``a`` narrowed to size 1 along every dim it repeats along (stride 0, a broadcast)."""
    return a[tuple(slice(0, 1) if st == 0 else slice(None) for st in a.strides)]


def _broadcast(fn, a: np.ndarray) -> np.ndarray:
    """``fn`` (elementwise) of a broadcast array, computed once per stored element."""
    return np.broadcast_to(fn(_stored(a)), a.shape)


def _module_of(param_name: str) -> str:
    for suffix in (".weight", ".bias"):
        if param_name.endswith(suffix):
            return param_name[: -len(suffix)]
    return param_name


def _resolve(term: CostTerm, to_units, tr: Trace) -> Term:
    factors = []
    for atoms, counts in term.factors:
        units = to_units(atoms)
        u, inv = np.unique(units, return_inverse=True)
        c = np.zeros(len(u))
        np.add.at(c, inv, counts)
        factors.append(Factor("channels", u, c))
    return Term(term.op, term.module, term.coef, tuple(factors), op_index=term.op_index, weight=term.weight)


def _param_terms(model: nn.Module, slices: dict[str, ParamSlice]) -> list[Term]:
    """One cost term per parameter: its element count as a function of the kept units.  The
    term's module is the parameter's own name (block membership is by prefix)."""
    terms = []
    for name, p in model.named_parameters():
        ps = slices.get(name)
        if ps is None:
            terms.append(Term("param", name, float(p.numel()), weight=name))
        elif ps.dense is not None:
            small = _stored(ps.dense)
            u, c = np.unique(small.ravel(), return_counts=True)
            terms.append(Term("param", name, 1.0, (Factor("channels", u, c.astype(float) * (ps.dense.size // small.size)),),
                              weight=name))
        else:
            coef = float(np.prod([p.shape[d] for d in range(p.dim()) if d not in ps.dims]))
            factors = []
            for d, units in sorted(ps.dims.items()):
                u, c = np.unique(units, return_counts=True)
                factors.append(Factor("channels", u, c.astype(float)))
            terms.append(Term("param", name, coef, tuple(factors), weight=name))
    return terms
