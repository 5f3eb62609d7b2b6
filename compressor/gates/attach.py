"""``attach_gates``: put channel and depth gates into a model, and take them out again."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection

import numpy as np
import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from ..space import Space
from ..space.blocks import cut_branches, trace_owner
from .modules import ChannelMask, ChannelMix, DepthGate, GateValues, InputGate
from .norms import NormMask
from .standardised import StandardisedMask


class Gates:
    """Handle over the gates of one model.  ``units``/``blocks`` take hard 0/1 or soft values."""

    def __init__(self, model: nn.Module, space: Space) -> None:
        self.model = model
        self.space = space
        self.values = GateValues(space.num_units, len(space.blocks))
        self._replaced: dict[str, nn.Module] = {}
        # (module, attribute, whether it was a non-persistent buffer), in registration order
        self._parametrized: list[tuple[nn.Module, str, bool]] = []
        # units whose every consumer contracts over them one column each: ``values.mix`` may
        # recombine them (set by attach_gates)
        self.mixable = np.ones(space.num_units, dtype=bool)
        self._hooks: list = []

    def set(self, units: torch.Tensor | None = None, blocks: torch.Tensor | None = None) -> None:
        if units is not None:
            if units.shape != (self.space.num_units,):
                raise ValueError(f"expected {self.space.num_units} unit values, got {tuple(units.shape)}")
            self.values.units = units
            self.values.units_are_ones = not units.requires_grad and bool((units == 1).all())
        if blocks is not None:
            if blocks.shape != (len(self.space.blocks),):
                raise ValueError(f"expected {len(self.space.blocks)} block values, got {tuple(blocks.shape)}")
            self.values.blocks = blocks

    def parametrize(self, module: nn.Module, attr: str, gate: nn.Module) -> None:
        """Register ``gate`` as the parametrization of ``module.attr`` (undone by :meth:`remove`)."""
        self._parametrized.append((module, attr, attr in module._non_persistent_buffers_set))
        parametrize.register_parametrization(module, attr, gate)

    def remove(self) -> nn.Module:
        """Detach every gate; the model computes exactly what it did before :func:`attach_gates`."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        for module, name, transient in reversed(self._parametrized):
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)
            if transient:  # remove_parametrizations registers a buffer back as persistent
                module._non_persistent_buffers_set.add(name)
        self._parametrized.clear()
        # Last rewritten, first restored: an owner rewritten inside another one (a residual inside
        # a residual block) is put back in the outer original only once that is back in place.
        for owner, original in reversed(self._replaced.items()):
            self.model = _set_module(self.model, owner, original)
        self._replaced.clear()
        return self.model


def attach_gates(model: nn.Module, space: Space, *, params: set[str] | None = None,
                 owners: set[str] | None = None, cut: Collection[int] = ()) -> Gates:
    """Gate ``model`` in place (owners of residual blocks become fx GraphModules with a
    :class:`DepthGate` on each branch; consumer weights get a :class:`ChannelMask`).  A weight
    whose gated units are all frozen or pinned gets no mask (its gates could only ever be 1); a
    weight standardised in the forward gets a :class:`StandardisedMask` instead.
    The weights of normalisations over channels get a :class:`NormMask` (statistics over kept
    channels).
    ``params``/``owners`` restrict the gates to those weights / block owners (for checks).
    ``cut``: indices of blocks whose value stays 0 while the gates are on: their branches are left
    out of the graph (with their modules), so they cost nothing and take no gradient.

    Returns the :class:`Gates` handle; use ``gates.model`` (the root itself may be replaced when
    the model's own forward holds a residual add).
    """
    if cut and owners is not None:
        raise ValueError("attach_gates: cut and owners do not combine (a check gates some owners, a part cuts)")
    gates = Gates(model, space)
    cut = set(cut)
    cut_blocks = [space.blocks[i] for i in sorted(cut)]

    def is_cut(name: str) -> bool:
        return any(b.contains(name) for b in cut_blocks)

    by_owner: dict[str, list[int]] = defaultdict(list)
    for i, b in enumerate(space.blocks):
        if (owners is None or b.owner in owners) and not is_cut(b.owner):
            by_owner[b.owner].append(i)
    for owner, idxs in by_owner.items():
        original = gates.model.get_submodule(owner) if owner else gates.model
        gm = trace_owner(original)
        cut_here = [space.blocks[i] for i in idxs if i in cut]
        if cut_here:
            cut_branches(gm, cut_here)
            gm = fx.GraphModule(original, gm.graph, class_name=type(original).__name__)  # drops their modules
        nodes = {n.name: n for n in gm.graph.nodes}
        for i in idxs:
            b = space.blocks[i]
            if i in cut:
                continue
            add, branch = nodes[b.add_node], nodes[b.branch_node]
            gate_name = f"depth_gate_{i}"
            gm.add_submodule(gate_name, DepthGate(gates.values, i))
            with gm.graph.inserting_after(branch):
                gated = gm.graph.call_module(gate_name, (branch,))
            add.args = tuple(gated if a is branch else a for a in add.args)
        gm.recompile()
        gates._replaced[owner] = original
        gates.model = _set_module(gates.model, owner, gm)

    per_param: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for name, dim, units in space.gate_sites:
        if (units >= 0).any() and (params is None or name in params) and not is_cut(name):
            per_param[name].append((dim, units))
    free = space.prunable_mask()
    per_param = {name: dims for name, dims in per_param.items()
                 if any(free[u[u >= 0]].any() for _, u in dims)}
    n = space.num_units
    for name, dims in per_param.items():
        mod_name, _, attr = name.rpartition(".")
        module = gates.model.get_submodule(mod_name)
        idx = [(d, torch.from_numpy(np.where(u >= 0, u, n))) for d, u in dims]
        ndim = getattr(module, attr).dim()
        if name in space.standardised:  # statistics over kept inputs; inputs are not recombined
            gates.parametrize(module, attr, StandardisedMask(gates.values, idx, ndim))
            for _, u in dims:
                gates.mixable[u[u >= 0]] = False
            continue
        mask = ChannelMask(gates.values, idx, ndim)
        gates.parametrize(module, attr, mask)
        channel_dim = -1 if isinstance(module, nn.Linear) else 1
        for (d, u), (_, ix) in zip(dims, idx):
            if attr == "weight" and is_contracting(module, d) and _one_position_per_unit(u):
                gates._hooks.append(module.register_forward_pre_hook(ChannelMix(gates.values, ix, channel_dim)))
            else:
                gates.mixable[u[u >= 0]] = False
        if attr == "weight" and len(dims) == 1 and is_contracting(module, dims[0][0]):  # after any ChannelMix
            gate = InputGate(gates.values, mask, module.parametrizations[attr].original.numel(), channel_dim)
            gates._hooks.append(module.register_forward_pre_hook(gate.pre))
            gates._hooks.append(module.register_forward_hook(gate.post, always_call=True))
    for name, idx, groups in norm_masks(space, params):
        if is_cut(name):
            continue
        mod_name, _, attr = name.rpartition(".")
        module = gates.model.get_submodule(mod_name)
        gates.parametrize(module, attr, NormMask(gates.values, idx, groups))
    return gates


def norm_masks(space: Space, params: set[str] | None = None) -> list[tuple[str, torch.Tensor, int]]:
    """``(weight name, unit index per channel, groups)`` of every normalisation over channels
    that a decision can change (one per weight; ``space.num_units`` marks a channel of no unit)."""
    free = space.prunable_mask()
    done: dict[str, tuple[str, torch.Tensor, int]] = {}
    for name, _, units, groups in space.norm_sites:
        if name in done or (params is not None and name not in params) or not free[units[units >= 0]].any():
            continue
        done[name] = (name, torch.from_numpy(np.where(units >= 0, units, space.num_units)), groups)
    return list(done.values())


def is_contracting(module: nn.Module, dim: int) -> bool:
    """True if ``module``'s weight sums over its inputs along ``dim`` (a dense conv or linear)."""
    if isinstance(module, nn.Linear):
        return dim == 1
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        return dim == 1 and module.groups == 1
    return False


def _one_position_per_unit(units: np.ndarray) -> bool:
    u = units[units >= 0]
    return len(u) == len(np.unique(u))


def _set_module(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    if not name:
        return new
    root.set_submodule(name, new)
    return root

