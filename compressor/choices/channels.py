"""The ``channels`` kind: units of coupled channel groups.

Sites are the channel groups the tracer found (:mod:`compressor.space.grouping`); a slot is a
unit (one channel, or one group of a grouped conv).  Gates are weight parametrizations on every
*consumer* of a unit (zeroing a unit's input columns removes it exactly) plus masked statistics
in normalisations over channels; surgery cuts every parameter that reads or writes a removed unit
(:mod:`compressor.surgery.channels`).  Payload: ``{group name: [kept unit indices]}`` for the
groups that change.
"""
from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..gates.modules import ChannelMask, ChannelMix, InputGate
from ..gates.norms import NormMask
from ..gates.standardised import StandardisedMask
from ..space.grouping import ChannelGroup, ParamSlice, UnitGateSite, UnitNormSite
from ..space.kinds import ChoiceKind, ChoiceSet, register_kind
from ..space.records import ReshapeSite, SplitSite
from ..surgery.channels import cut_channels


@dataclass(frozen=True)
class ChannelChoices(ChoiceSet):
    """Every channel group of a model and every record that reads its units."""

    groups: tuple[ChannelGroup, ...]
    param_slices: Mapping[str, ParamSlice]
    gate_sites: tuple[UnitGateSite, ...] = ()
    norm_sites: tuple[UnitNormSite, ...] = ()
    reshapes: tuple[ReshapeSite, ...] = ()
    splits: tuple[SplitSite, ...] = ()
    standardised: frozenset[str] = frozenset()

    @property
    def size(self) -> int:
        return sum(g.size for g in self.groups)

    def items(self) -> list[str]:
        return [g.name for g in self.groups]

    def group(self, name: str) -> ChannelGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"no channel group named {name!r}")

    def unit_group(self) -> np.ndarray:
        """Group index of every flat unit."""
        return np.concatenate([np.full(g.size, i) for i, g in enumerate(self.groups)]) \
            if self.groups else np.zeros(0, dtype=np.int64)

    @cached_property
    def modules_of(self) -> dict[str, set[str]]:
        """Per group, the modules whose parameters read or write its units."""
        group_of = np.append(self.unit_group(), -1)
        out: dict[str, set[str]] = {g.name: set() for g in self.groups}
        for name, ps in self.param_slices.items():
            arrays = list(ps.dims.values()) + ([ps.dense.ravel()] if ps.dense is not None else [])
            touched = {int(i) for a in arrays for i in np.unique(group_of[np.asarray(a)]) if i >= 0}
            for gi in touched:
                out[self.groups[gi].name].add(name.rpartition(".")[0])
        return out

    def free(self) -> np.ndarray:
        mask = np.zeros(self.size, dtype=bool)
        for g in self.groups:
            if g.prunable:
                mask[g.units] = ~g.pinned
        return mask


@register_kind
class ChannelKind(ChoiceKind):
    name = "channels"
    attach_order = 20
    cut_order = 10
    rule_keys = ("min_keep",)

    def find(self, found) -> ChannelChoices:
        g = found.grouping
        return ChannelChoices(tuple(g.groups), dict(g.param_slices), tuple(g.gate_sites), tuple(g.norm_sites),
                              tuple(g.reshapes), tuple(g.splits), frozenset(g.standardised))

    # -- payload -------------------------------------------------------------------------------------
    def keep(self, choices: ChannelChoices, payload) -> np.ndarray:
        keep = np.ones(choices.size)
        for name, kept in (payload or {}).items():
            g = choices.group(name)
            keep[g.units] = 0.0
            keep[g.offset + np.asarray(list(kept), dtype=np.int64)] = 1.0
        return keep

    def payload(self, choices: ChannelChoices, keep: np.ndarray) -> dict[str, list[int]] | None:
        out = {g.name: np.flatnonzero(keep[g.units]).tolist() for g in choices.groups
               if g.prunable and not keep[g.units].all()}
        return out or None

    def parse(self, raw: Any) -> dict[str, list[int]]:
        if not isinstance(raw, Mapping) or not all(isinstance(v, (list, tuple)) for v in raw.values()):
            raise ValueError("channels: expected {group name: [kept unit indices]}")
        return {str(k): [_index(i, k) for i in v] for k, v in raw.items()}

    def check(self, choices: ChannelChoices, payload) -> None:
        names = {g.name: g for g in choices.groups}
        for name, kept in payload.items():
            g = names.get(name)
            if g is None:
                raise ValueError(f"decision names unknown channel group {name!r}")
            kept_set = set(kept)
            if not kept_set:
                raise ValueError(f"decision keeps no unit of group {name!r}")
            if min(kept_set) < 0 or max(kept_set) >= g.size:
                raise ValueError(f"group {name!r} has {g.size} units; decision keeps {max(kept_set)}")
            removed = set(range(g.size)) - kept_set
            if removed and g.frozen:
                raise ValueError(f"group {name!r} is frozen ({g.frozen})")
            if removed and g.pinned[list(removed)].any():
                raise ValueError(f"group {name!r}: decision removes units that reach the model output")

    def summary(self, choices: ChannelChoices, payload) -> dict[str, Any]:
        payload = payload or {}
        return {"widths": {g.name: {"kept": len(payload.get(g.name, range(g.size))) * int(g.channels[0]),
                                    "of": g.size * int(g.channels[0])}
                           for g in choices.groups if g.prunable}}

    # -- gates and surgery ---------------------------------------------------------------------------
    def gate_items(self, choices: ChannelChoices) -> list[str]:
        return sorted({s.name for s in choices.gate_sites} | {s.name for s in choices.norm_sites})

    def attach(self, gates, choices: ChannelChoices, only: set[str] | None = None) -> None:
        attach_channel_gates(gates, choices, only)

    def cut(self, model: nn.Module, choices: ChannelChoices, payload) -> nn.Module:
        return cut_channels(model, choices, self.keep(choices, payload) > 0.5)

    # -- budgets ---------------------------------------------------------------------------------------
    def scores(self, model: nn.Module, choices: ChannelChoices,
               element: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
        """Sum of ``element`` over every parameter slice a unit owns (output rows of its
        producers, input columns of its consumers, norm and free parameters), divided by the
        mean of its group."""
        n = choices.size
        scores = np.zeros(n + 1)
        tensors = dict(model.named_parameters())
        for name, ps in choices.param_slices.items():
            p = tensors.get(name)
            if p is None:
                continue
            s = element(p).detach().double().cpu().numpy()
            if ps.dense is not None:
                np.add.at(scores, np.where(ps.dense >= 0, ps.dense, n).ravel(), s.ravel())
            for d, units in ps.dims.items():
                per_pos = s.sum(axis=tuple(i for i in range(s.ndim) if i != d)) if s.ndim > 1 else s
                np.add.at(scores, np.where(units >= 0, units, n), per_pos)
        return normalise_by_group(choices, scores[:-1])

    def settle(self, choices: ChannelChoices, keep: np.ndarray, scores: np.ndarray | None,
               round_to: int | None) -> None:
        """Every prunable group keeps its pinned units and at least ``min_keep`` units (its best
        ones, else its first), then grows to a multiple of ``round_to`` channels."""
        for g in choices.groups:
            sl = keep[g.units]
            sl[g.pinned] = True
            if not g.prunable:
                sl[:] = True
                continue
            _add_best(sl, g, g.min_keep - int(sl.sum()), scores)
            if round_to and round_to > 1:
                per_unit = int(g.channels[0]) if len(g.channels) else 1
                want = min(g.size, math.ceil(int(sl.sum()) * per_unit / round_to) * round_to // max(per_unit, 1))
                _add_best(sl, g, want - int(sl.sum()), scores)

    # -- checks and rules -----------------------------------------------------------------------------
    def sites_of_gate(self, choices: ChannelChoices, item: str) -> list[str]:
        units = [s.units[s.units >= 0] for s in (*choices.gate_sites, *choices.norm_sites) if s.name == item]
        group_of = choices.unit_group()
        found = np.unique(group_of[np.concatenate(units)]) if units else []
        return [choices.groups[int(i)].name for i in found]

    def checkable(self, choices: ChannelChoices) -> list[str]:
        return [g.name for g in choices.groups if g.prunable and (~g.pinned).sum() >= 2]

    def suspects(self, choices: ChannelChoices, items: list[str]) -> list[list[str]]:
        """Groups whose channels pass through a reshape (heads...), by the class of the module
        running it: the usual suspects, and usually alike within a class."""
        classes: dict[str, set[str]] = defaultdict(set)
        wanted = [choices.group(n) for n in items]
        for site in choices.reshapes:
            units = np.unique(site.atoms[site.atoms >= 0])
            for g in wanted:
                if ((units >= g.offset) & (units < g.offset + g.size)).any():
                    classes[g.name].add(site.module_type)
        buckets: dict[str, list[str]] = defaultdict(list)
        for g in wanted:
            if g.name in classes:
                buckets[",".join(sorted(classes[g.name]))].append(g.name)
        return list(buckets.values())

    def frozen(self, choices: ChannelChoices) -> dict[str, str]:
        return {g.name: g.frozen for g in choices.groups if g.frozen}

    def freeze(self, choices: ChannelChoices, reasons: dict[str, str]) -> ChannelChoices:
        groups = tuple(dataclasses.replace(g, frozen=reasons[g.name]) if g.name in reasons and g.prunable
                       else g for g in choices.groups)
        return choices.replace(groups=groups)

    def sample(self, choices: ChannelChoices, items: list[str], rng: np.random.Generator,
               share: Callable[[int], float]) -> dict[str, list[int]]:
        kept = {}
        for i, name in enumerate(items):
            g = choices.group(name)
            free = np.flatnonzero(~g.pinned)
            n = min(len(free), max(1, int(round(len(free) * share(i)))))
            kept[g.name] = sorted(set(rng.choice(free, size=n, replace=False).tolist())
                                  | set(np.flatnonzero(g.pinned).tolist()))
        return kept

    def modules(self, choices: ChannelChoices, item: str) -> set[str]:
        return choices.modules_of[item]

    def constrain(self, choices: ChannelChoices, item: str, rule: dict[str, Any]) -> ChannelChoices:
        share = rule["min_keep"]
        if isinstance(share, bool) or not isinstance(share, (int, float)):
            raise ValueError(f"min_keep must be a fraction in (0, 1], got {share!r}")
        if not 0 < share <= 1:
            raise ValueError(f"min_keep must be a fraction in (0, 1], got {share}")
        groups = tuple(dataclasses.replace(g, min_keep=max(1, math.ceil(share * g.size)))
                       if g.name == item else g for g in choices.groups)
        return choices.replace(groups=groups)

    def describe(self, space, choices: ChannelChoices, verbose: bool = False) -> list[str]:
        fshare, pshare = cost_shares(space, choices, "flops"), cost_shares(space, choices, "params")
        prunable = [g for g in choices.groups if g.prunable]
        lines = [f"channel groups: {len(choices.groups)} ({len(prunable)} prunable, "
                 f"{len(choices.groups) - len(prunable)} frozen)",
                 f"  {'group':<44} {'units':>6} {'ch/unit':>7} {'FLOPs%':>7} {'params%':>7}  status"]
        order = range(len(choices.groups)) if verbose else sorted(range(len(choices.groups)),
                                                                   key=lambda i: -fshare.get(i, 0))[:40]
        for i in order:
            g = choices.groups[i]
            lines.append(f"  {g.name[:44]:<44} {g.size:>6} {int(g.channels[0]):>7} {100 * fshare.get(i, 0):>6.1f}% "
                         f"{100 * pshare.get(i, 0):>6.1f}%  {'prunable' if g.prunable else 'frozen'}")
        if len(order) < len(choices.groups):
            lines.append(f"  ... {len(choices.groups) - len(order)} smaller groups (--all lists them)")
        frozen = [g for g in choices.groups if not g.prunable]
        if frozen:
            lines += ["", "frozen groups:"] + [f"  {g.name}: {g.frozen}" for g in frozen]
        return lines


def normalise_by_group(choices: ChannelChoices, scores: np.ndarray) -> np.ndarray:
    """``scores`` divided by the mean score of each unit's group (a group whose mean is not
    positive is left as it is): scores of different layers become comparable."""
    s = np.asarray(scores, dtype=np.float64).copy()
    for g in choices.groups:
        mean = s[g.units].mean() if g.size else 0.0
        if mean > 0:
            s[g.units] /= mean
    return s


def _add_best(sl: np.ndarray, g: ChannelGroup, n: int, scores: np.ndarray | None) -> None:
    """Turn on ``n`` more units of the group view ``sl``: the best-scoring removed ones (the
    lowest-numbered when ``scores`` is None)."""
    if n <= 0:
        return
    removed = np.flatnonzero(~sl)
    if scores is not None:
        removed = removed[np.argsort(-scores[g.offset + removed], kind="stable")]
    sl[removed[:n]] = True


def _index(value: Any, group: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"channels: group {group!r} lists {value!r}, not a unit index")
    return int(value)


def attach_channel_gates(gates, choices: ChannelChoices, only: set[str] | None) -> None:
    """Consumer weights get a :class:`ChannelMask` (a weight standardised in the forward a
    :class:`StandardisedMask`); normalisations over channels a :class:`NormMask`.  A weight whose
    gated units are all frozen or pinned gets no mask (its gates could only ever be 1)."""
    per_param: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for s in choices.gate_sites:
        if (s.units >= 0).any() and (only is None or s.name in only) and not gates.left_out(s.name):
            per_param[s.name].append((s.dim, s.units))
    free = choices.free()
    per_param = {name: dims for name, dims in per_param.items() if any(free[u[u >= 0]].any() for _, u in dims)}
    n = choices.size
    gates.mixable = np.ones(n, dtype=bool)
    for name, dims in per_param.items():
        mod_name, _, attr = name.rpartition(".")
        module = gates.model.get_submodule(mod_name)
        idx = [(d, torch.from_numpy(np.where(u >= 0, u, n))) for d, u in dims]
        ndim = getattr(module, attr).dim()
        if name in choices.standardised:  # statistics over kept inputs; inputs are not recombined
            gates.parametrize(module, attr, StandardisedMask(gates.values, idx, ndim))
            for _, u in dims:
                gates.mixable[u[u >= 0]] = False
            continue
        mask = ChannelMask(gates.values, idx, ndim)
        gates.parametrize(module, attr, mask)
        channel_dim = -1 if isinstance(module, nn.Linear) else 1
        for (d, u), (_, ix) in zip(dims, idx):
            if attr == "weight" and _is_contracting(module, d) and _one_position_per_unit(u):
                gates.hook(module.register_forward_pre_hook(ChannelMix(gates.values, ix, channel_dim)))
            else:
                gates.mixable[u[u >= 0]] = False
        if attr == "weight" and len(dims) == 1 and _is_contracting(module, dims[0][0]):  # after any ChannelMix
            gate = InputGate(gates.values, mask, module.parametrizations[attr].original.numel(), channel_dim)
            gates.hook(module.register_forward_pre_hook(gate.pre))
            gates.hook(module.register_forward_hook(gate.post, always_call=True))
    done: set[str] = set()
    for s in choices.norm_sites:
        if s.name in done or (only is not None and s.name not in only) or not free[s.units[s.units >= 0]].any() \
                or gates.left_out(s.name):
            continue
        done.add(s.name)
        mod_name, _, attr = s.name.rpartition(".")
        gates.parametrize(gates.model.get_submodule(mod_name), attr,
                          NormMask(gates.values, torch.from_numpy(np.where(s.units >= 0, s.units, n)), s.groups))


def _is_contracting(module: nn.Module, dim: int) -> bool:
    """True if ``module``'s weight sums over its inputs along ``dim`` (a dense conv or linear)."""
    if isinstance(module, nn.Linear):
        return dim == 1
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        return dim == 1 and module.groups == 1
    return False


def _one_position_per_unit(units: np.ndarray) -> bool:
    u = units[units >= 0]
    return len(u) == len(np.unique(u))


def cost_shares(space, choices: ChannelChoices, what: str) -> dict[int, float]:
    """Share of the full cost each group's units carry (a term split evenly between its groups)."""
    unit_group = choices.unit_group()
    total, shares = 0.0, defaultdict(float)
    for t in space.cost.terms(what):
        value = t.coef * float(np.prod([f.counts.sum() for f in t.factors])) if t.factors else t.coef
        total += value
        gids = {int(unit_group[u]) for f in t.factors if f.kind == "channels" for u in f.slots if u >= 0}
        for g in gids:
            shares[g] += value / len(gids)
    return {g: v / total for g, v in shares.items()} if total else {}
