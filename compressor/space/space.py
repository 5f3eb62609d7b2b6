"""The search space of one model: channel groups and residual blocks, built by one trace."""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .blocks import ResidualBlock, assign_stages, find_blocks
from .liveness import live_blocks
from .dsu import DisjointSets
from .records import CostTerm, ReshapeSite, SplitSite
from .rules import rule_for
from .tracer import TraceError, run_trace

__all__ = ["ChannelGroup", "ResidualBlock", "Space", "build_space", "TraceError"]


REACHES_OUTPUT = "reaches the model output"
"""The frozen reason of a group the model's output reads: its units are the output's, not the model's."""

@dataclass
class ChannelGroup:
    """Output channels that must be removed together, split into *units* (the smallest removable
    pieces: one channel, or one whole group of a grouped conv).

    Attributes:
        name: the first producer's module name, e.g. ``"layer1.0.conv1"``.
        size: number of units.
        offset: index of unit 0 in the space's flat unit vector.
        channels: channels of the first producer per unit (1 for plain channels).
        pinned: units that can never go (they reach the model output).
        frozen: why the group cannot be changed at all, or None.
        producers: names of the parameters whose output channels the group spans.
    """

    name: str
    size: int
    offset: int
    channels: np.ndarray
    pinned: np.ndarray
    frozen: str | None = None
    producers: list[str] = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return self.frozen is None


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


class Space:
    """What can change in a model.  Build it with :func:`compressor.trace`.

    Example:
        >>> space = compressor.trace(torchvision.models.resnet18(), (torch.randn(1, 3, 64, 64),))
        >>> [g.name for g in space.groups if g.prunable][:2]
        ['conv1', 'layer1.0.conv1']
    """

    def __init__(self, groups, blocks, param_slices, gate_sites, flops_terms, param_terms,
                 input_shapes, skipped_owners, trace_seconds, reshapes=(), splits=(),
                 norm_sites=(), standardised=()):
        self.groups: list[ChannelGroup] = groups
        self.blocks: list[ResidualBlock] = blocks
        self.param_slices: dict[str, ParamSlice] = param_slices
        self.gate_sites: list[tuple[str, int, np.ndarray]] = gate_sites
        self.flops_terms = flops_terms
        self.param_terms = param_terms
        self.input_shapes = input_shapes
        self.skipped_owners: dict[str, str] = skipped_owners
        self.trace_seconds = trace_seconds
        self.reshapes: list[ReshapeSite] = list(reshapes)
        self.splits: list[SplitSite] = list(splits)
        # normalisations over channels: (weight name, kind, unit per channel, groups)
        self.norm_sites: list[tuple[str, str, np.ndarray, int]] = list(norm_sites)
        # weights normalised per output row in the forward (weight standardisation)
        self.standardised: frozenset[str] = frozenset(standardised)
        self.dropped_blocks: dict[str, str] = {}
        self.num_units = sum(g.size for g in groups)
        self._cost = None

    def group(self, name: str) -> ChannelGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"no channel group named {name!r}")

    def block(self, name: str) -> ResidualBlock:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(f"no residual block named {name!r}")

    @property
    def cost(self):
        """The :class:`~compressor.space.cost.CostModel` of this space."""
        if self._cost is None:
            from .cost import CostModel

            self._cost = CostModel(self)
        return self._cost

    def unit_group(self) -> np.ndarray:
        """Group index of every flat unit."""
        return np.concatenate([np.full(g.size, i) for i, g in enumerate(self.groups)]) \
            if self.groups else np.zeros(0, dtype=np.int64)

    def prunable_mask(self) -> np.ndarray:
        """True for every flat unit a decision may remove."""
        mask = np.zeros(self.num_units, dtype=bool)
        for g in self.groups:
            if g.prunable:
                mask[g.offset:g.offset + g.size] = ~g.pinned
        return mask


def build_space(model: nn.Module, example_inputs: tuple | torch.Tensor, *, blocks: bool = True) -> Space:
    """Trace ``model`` once on ``example_inputs`` and return its :class:`Space`, unchecked
    (:func:`compressor.trace` also checks it against the model).

    The model runs in eval mode (its mode is restored).  Raises :class:`TraceError` naming the
    module and op when a forward pass cannot be followed.
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        tr, _ = run_trace(model, example_inputs, rule_for)
    finally:
        model.train(was_training)
    roots = tr.ds.roots()
    tr.ds = None  # ``roots`` is all that is left of it
    groups, unit_of_root = _groups(tr, roots)
    unit_of_atom = unit_of_root[roots]
    del roots, unit_of_root

    def to_units(atoms: np.ndarray) -> np.ndarray:
        atoms = np.asarray(atoms, dtype=np.int64)
        return np.where(atoms >= 0, unit_of_atom[np.maximum(atoms, 0)], -1)

    param_slices: dict[str, ParamSlice] = {}
    for pd in tr.param_dims:
        ps = param_slices.setdefault(pd.name, ParamSlice(pd.name))
        u = to_units(pd.atoms)
        if pd.dim in ps.dims and not np.array_equal(ps.dims[pd.dim], u):
            raise TraceError(f"parameter '{pd.name}' is used with two different channel layouts")
        ps.dims[pd.dim] = u
    for name, dp in tr.dense_params.items():
        param_slices.setdefault(name, ParamSlice(name)).dense = _broadcast(to_units, dp.atoms)
    gate_sites, seen_sites = [], set()
    for gs in tr.gate_sites:  # a module applied twice registers its (tied) gates twice: keep one
        units = to_units(gs.atoms)
        key = (gs.name, gs.dim, units.tobytes())
        if key not in seen_sites:
            seen_sites.add(key)
            gate_sites.append((gs.name, gs.dim, units))

    norm_sites, seen_norms = [], set()
    for ns in tr.norm_sites:
        units = to_units(ns.atoms)
        key = (ns.name, units.tobytes())
        if key not in seen_norms:
            seen_norms.add(key)
            norm_sites.append((ns.name, ns.kind, units, ns.groups))

    space_blocks: list[ResidualBlock] = []
    skipped: dict[str, str] = {}
    dropped: dict[str, str] = {}
    if blocks:
        owners = list(dict.fromkeys(m for m, _ in tr.add_sites))
        modules = dict(model.named_modules(remove_duplicate=False))
        costly = {id(modules[t.module]) for t in tr.costs if t.module in modules}
        space_blocks, skipped, dropped = find_blocks(model, owners, costly)
    flops_terms = [_resolve(t, to_units) for t in tr.costs]
    live = live_blocks(tr.flow, space_blocks)
    for t in flops_terms:
        t.live_blocks = live.get(t.op_index)
    param_terms = _param_terms(model, param_slices)
    splits = [SplitSite(sp.module, sp.sizes, to_units(sp.atoms)) for sp in tr.splits]
    reshapes = [ReshapeSite(r.module, r.shape, r.varying, to_units(r.atoms), r.module_type) for r in tr.reshapes]
    space = Space(groups, space_blocks, param_slices, gate_sites, flops_terms, param_terms,
                  [tuple(x.shape) for x in example_inputs if isinstance(x, torch.Tensor)],
                  skipped, time.perf_counter() - t0, reshapes, splits, norm_sites, tr.standardised_params)
    space.dropped_blocks.update(dropped)
    group_of = space.unit_group()
    assign_stages(space.blocks, {name: {int(group_of[u]) for d in ps.dims.values() for u in d if u >= 0}
                                 for name, ps in param_slices.items()})
    return space


def _groups(tr, roots: np.ndarray) -> tuple[list[ChannelGroup], np.ndarray]:
    """The channel groups: units (roots of atoms) joined by sharing a producer, groups and units
    ordered by first producer; and the flat unit index of every root (-1 for none)."""
    n_atoms = len(roots)
    grouping = DisjointSets()  # a second union-find, over the roots
    grouping.new(n_atoms)
    for prod in tr.producers:
        grouping.union_all(roots[prod.atoms])
    units_by_group: dict[int, list[np.ndarray]] = {}
    names_by_group: dict[int, list[str]] = defaultdict(list)
    channels = np.zeros(n_atoms, dtype=np.int32)  # per root: channels of its group's first producer
    seen = np.zeros(n_atoms, dtype=bool)
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
    del seen
    merge_reasons: dict[int, list[str]] = defaultdict(list)
    for m in tr.merges:
        r = roots[m.atoms[:1]]
        if len(r):
            gid = int(grouping.find(r)[0])
            reason = f"{m.op.replace('aten.', '').split('.')[0]} in '{m.module or '<root>'}'"
            if reason not in merge_reasons[gid]:
                merge_reasons[gid].append(reason)
    del grouping
    pinned_roots = np.unique(roots[tr.pinned])
    output_roots = np.unique(roots[tr.output_pinned])

    unit_of_root = np.full(n_atoms, -1, dtype=np.int64)
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
        name = _module_of(names_by_group[gid][0])
        base, k = name, 1
        while name in used_names:
            k += 1
            name = f"{base}~{k}"
        used_names.add(name)
        frozen = None
        if pinned.all():
            frozen = REACHES_OUTPUT if np.isin(units, output_roots).any() else \
                "every channel is the first of a split or reshape part (one must stay in each)"
        elif len(units) < 2:
            why = "; ".join(merge_reasons[gid][:3]) or "a single channel"
            frozen = f"channels are tied together by {why}"
        groups.append(ChannelGroup(name, len(pinned), offset, count, pinned, frozen, names_by_group[gid]))
        offset += len(pinned)
    return groups, unit_of_root


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


def _resolve(term: CostTerm, to_units) -> CostTerm:
    factors = []
    for atoms, counts in term.factors:
        units = to_units(atoms)
        u, inv = np.unique(units, return_inverse=True)
        c = np.zeros(len(u))
        np.add.at(c, inv, counts)
        factors.append((u, c))
    return CostTerm(term.op, term.module, term.coef, factors, op_index=term.op_index)


def _param_terms(model: nn.Module, slices: dict[str, ParamSlice]) -> list[CostTerm]:
    """One cost term per parameter: its element count as a function of the kept units."""
    terms = []
    for name, p in model.named_parameters():
        ps = slices.get(name)
        module = name.rsplit(".", 1)[0] if "." in name else ""
        if ps is None:
            terms.append(CostTerm("param", name, float(p.numel()), []))
        elif ps.dense is not None:
            small = _stored(ps.dense)
            u, c = np.unique(small.ravel(), return_counts=True)
            terms.append(CostTerm("param", name, 1.0, [(u, c.astype(float) * (ps.dense.size // small.size))]))
        else:
            coef = float(np.prod([p.shape[d] for d in range(p.dim()) if d not in ps.dims]))
            factors = []
            for d, units in sorted(ps.dims.items()):
                u, c = np.unique(units, return_counts=True)
                factors.append((u, c.astype(float)))
            terms.append(CostTerm("param", name, coef, factors))
        terms[-1].module = name  # the parameter's own name: block membership is by prefix
    return terms

