"""The ``op`` kind: a convolution or linear layer replaced by another operation.

Sites are the 2-D convolutions (dense, grouped, depthwise) and linear layers the trace ran, each a
module of its own (``nn.Conv2d``, ``nn.Linear``) so that surgery can swap it, and every module
that declares itself one (``op_site_kind``, ``op_site()``: its site kind and arguments, e.g. a
DARTS cell edge); the layers inside a declared site are not sites of their own.  Its options are
``itself`` and every registered candidate that applies (:mod:`compressor.choices.candidates`),
one slot each; a decision has one option at 1 per site.  The gate is a :class:`MixedOp` in the
module's place computing ``sum_o v_o * o(x)`` (a softmax over architecture logits during a
search, one-hot for a decision), so at one-hot values it is exactly the chosen operation:
surgery puts that operation's module there (invariant 2).  Every option's FLOPs and params are
measured on it at the site's traced input (the same counting as every other cost), and enter
the cost model as terms scaled by its slot; the original operation's terms by ``itself``'s.
Candidate costs assume the site's traced widths; a candidate that costs no less than the
original in both FLOPs and params (a factorised 7 x 7 stem on 3 input channels) is not offered
at a layer; a declared site offers every option (they are alternatives, not replacements).
Payload: ``{site: {"op": name, **args}}`` for the sites that changed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..space.cost import Term
from ..space.kinds import ChoiceKind, ChoiceSet, register_kind
from ..space.space import build_space
from .candidates import ITSELF, OpSite, build_option, label, module_like, options_at
from .mixed_op import MixedOp

OptionCost = tuple[float, float]  # (MACs, params) at the site
RULE_ATTRS = ("group", "keep", "off", "tie")  # site arguments that state a rule of the decision, not the op


@dataclass(frozen=True)
class OpChoice:
    """One site, its options (``itself`` first), their costs and its first slot."""

    site: OpSite
    options: tuple[dict[str, Any], ...]
    costs: tuple[OptionCost, ...]
    offset: int
    frozen: str | None = None

    @property
    def name(self) -> str:
        return self.site.name

    @property
    def slots(self) -> np.ndarray:
        return np.arange(self.offset, self.offset + len(self.options))

    def index(self, option: dict[str, Any]) -> int:
        for i, o in enumerate(self.options):
            if o == option:
                return i
        raise ValueError(f"site {self.name!r} has no option {label(option)} (it has "
                         f"{', '.join(label(o) for o in self.options)})")


@dataclass(frozen=True)
class OpChoices(ChoiceSet):
    sites: tuple[OpChoice, ...] = ()

    @property
    def size(self) -> int:
        return sum(len(s.options) for s in self.sites)

    def items(self) -> list[str]:
        return [s.name for s in self.sites]

    def site(self, name: str) -> OpChoice:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(f"no op site named {name!r}")

    def free(self) -> np.ndarray:
        mask = np.zeros(self.size, dtype=bool)
        for s in self.sites:
            if s.frozen is None and len(s.options) > 1:
                mask[s.slots] = True
        return mask

    def groups(self) -> list[tuple[list[int], int, list[int]]]:
        """Sites declaring one ``group`` (DARTS: the edges into a node): (their indices in
        ``sites``, how many of them keep an option other than their ``off`` one, each one's
        ``off`` option index)."""
        members: dict[str, list[int]] = {}
        for i, s in enumerate(self.sites):
            if "group" in s.site.attrs and s.frozen is None and len(s.options) > 1:
                members.setdefault(s.site.attrs["group"], []).append(i)
        return [(m, self.sites[m[0]].site.attrs["keep"],
                 [self.sites[i].index({"op": self.sites[i].site.attrs["off"]}) for i in m]) for m in members.values()]

    def ties(self) -> list[list[int]]:
        """Sites declaring one ``tie`` (they take the same option), as indices in ``sites``."""
        members: dict[str, list[int]] = {}
        for i, s in enumerate(self.sites):
            if "tie" in s.site.attrs and s.frozen is None and len(s.options) > 1:
                members.setdefault(s.site.attrs["tie"], []).append(i)
        return [m for m in members.values() if len(m) > 1]

    def linear_rows(self) -> list[tuple[np.ndarray, float]]:
        """``(row, value)``: ``row @ slots == value`` for every decision, beyond one option per
        site: each group's count of ``off`` options, each tie's options equal."""
        rows = []
        for m, keep, off in self.groups():
            row = np.zeros(self.size)
            row[[self.sites[i].offset + o for i, o in zip(m, off)]] = 1
            rows.append((row, float(len(m) - keep)))
        for m in self.ties():
            for a, b in zip(m, m[1:]):
                for k in range(len(self.sites[a].options)):
                    row = np.zeros(self.size)
                    row[self.sites[a].offset + k], row[self.sites[b].offset + k] = 1, -1
                    rows.append((row, 0.0))
        return rows


@register_kind
class OpKind(ChoiceKind):
    name = "op"
    attach_order = 40  # a module replaced after every other kind's gates are in
    cut_order = 5  # before channels: a replaced module is not cut
    weight_scored = False  # chosen by a search or by distillation scores, not by weight magnitude
    one_of = True

    def find(self, found) -> OpChoices:
        modules = dict(found.model.named_modules())
        allowed = found.options.get("candidates")
        sites, offset, priced_before = [], 0, {}
        for site in _sites(found, modules):
            priced = [(o, _cost(site, o, modules[site.name], priced_before)) for o in options_at(site, allowed)]
            own = priced[0][1]  # a replacement no cheaper than the original in FLOPs and params is no choice
            if site.replace_only:
                priced = priced[:1] + [(o, c) for o, c in priced[1:] if c[0] < own[0] or c[1] < own[1]]
            options, costs = tuple(o for o, _ in priced), tuple(c for _, c in priced)
            sites.append(OpChoice(site, options, costs, offset))
            offset += len(options)
        return OpChoices(tuple(sites))

    def refine_terms(self, choices: OpChoices, terms: list[Term], what: str) -> list[Term]:
        """The original operation's terms (every term computed inside the site's module) scale by
        ``itself``'s slot; each option adds its own cost, scaled and kept alive as the original's
        first term is (by the residual blocks around the site, refined before this kind)."""
        sites = {s.name: s for s in choices.sites}
        around, out = {}, []
        for t in terms:
            s = _owner(t, sites)
            if s is None:
                out.append(t)
                continue
            around.setdefault(s.name, (t.scale, t.live))
            out.append(t.with_(scale=t.scale + (("op", s.offset),)))
        col = 0 if what == "flops" else 1
        for s in choices.sites:
            scale, live = around.get(s.name, ((), None))
            out += [Term(f"op:{o['op']}", s.name, s.costs[i][col], scale=scale + (("op", s.offset + i),), live=live)
                    for i, o in enumerate(s.options) if i]
        return out

    # -- payload -------------------------------------------------------------------------------------
    def keep(self, choices: OpChoices, payload) -> np.ndarray:
        keep = np.zeros(choices.size)
        chosen = payload or {}
        for s in choices.sites:
            keep[s.offset + (s.index(chosen[s.name]) if s.name in chosen else 0)] = 1.0
        return keep

    def payload(self, choices: OpChoices, keep: np.ndarray) -> dict[str, dict] | None:
        out = {}
        for s in choices.sites:
            i = int(np.argmax(keep[s.slots]))
            if i:
                out[s.name] = dict(s.options[i])
        return out or None

    def parse(self, raw: Any) -> dict[str, dict]:
        if not isinstance(raw, dict) or not all(isinstance(v, dict) and isinstance(v.get("op"), str)
                                                for v in raw.values()):
            raise ValueError('op: expected {site: {"op": candidate name, ...arguments}}')
        return {str(k): dict(v) for k, v in raw.items()}

    def check(self, choices: OpChoices, payload) -> None:
        names = {s.name: s for s in choices.sites}
        for name, option in payload.items():
            s = names.get(name)
            if s is None:
                raise ValueError(f"decision names unknown op site {name!r}")
            s.index(option)
            if s.frozen and option["op"] != ITSELF:
                raise ValueError(f"op site {name!r} is frozen ({s.frozen})")

    def summary(self, choices: OpChoices, payload) -> dict[str, Any]:
        payload = payload or {}
        return {"operations": {s.name: {"chosen": label(payload.get(s.name, {"op": ITSELF})),
                                        "options": len(s.options)} for s in choices.sites}}

    # -- gates and surgery ---------------------------------------------------------------------------
    def gate_items(self, choices: OpChoices) -> list[str]:
        return [s.name for s in choices.sites if s.frozen is None and len(s.options) > 1]

    def attach(self, gates, choices: OpChoices, only: set[str] | None = None) -> None:
        for s in choices.sites:
            if s.frozen is None and len(s.options) > 1 and (only is None or s.name in only) \
                    and not gates.left_out(s.name):
                original = gates.model.get_submodule(s.name)
                gates.replace(s.name, MixedOp(original, s, gates.values))

    def cut(self, model: nn.Module, choices: OpChoices, payload) -> nn.Module:
        for name, option in payload.items():
            if option["op"] != ITSELF:
                original = model.get_submodule(name)
                chosen = build_option(choices.site(name).site, option).to(**module_like(original))
                model.set_submodule(name, chosen.train(original.training))
        return model

    # -- checks ---------------------------------------------------------------------------------------
    def checkable(self, choices: OpChoices) -> list[str]:
        return self.gate_items(choices)

    def frozen(self, choices: OpChoices) -> dict[str, str]:
        return {s.name: s.frozen for s in choices.sites if s.frozen}

    def freeze(self, choices: OpChoices, reasons: dict[str, str]) -> OpChoices:
        return choices.replace(sites=tuple(dataclasses.replace(s, frozen=reasons[s.name])
                                           if s.name in reasons and s.frozen is None else s for s in choices.sites))

    def sample(self, choices: OpChoices, items: list[str], rng: np.random.Generator,
               share: Callable[[int], float]) -> dict[str, dict]:
        out = {}
        for name in items:
            s = choices.site(name)
            out[name] = dict(s.options[int(rng.integers(1, len(s.options)))])
        return out

    def describe(self, space, choices: OpChoices, verbose: bool = False) -> list[str]:
        free = [s for s in choices.sites if s.frozen is None and len(s.options) > 1]
        full = space.cost.full("flops")
        kinds = sorted({s.site.kind for s in choices.sites})
        lines = [f"op sites: {len(choices.sites)} ({', '.join(kinds)}; {len(free)} with candidates)",
                 f"  {'site':<40} {'FLOPs%':>7}  options (FLOPs% each)"]
        for s in choices.sites if verbose else choices.sites[:40]:
            opts = ", ".join(f"{label(o)} {100 * c[0] / full:.1f}" for o, c in zip(s.options[1:], s.costs[1:]))
            lines.append(f"  {s.name[:40]:<40} {100 * s.costs[0][0] / full:>6.1f}%  {s.frozen or opts or '-'}")
        return lines


def _sites(found, modules: dict[str, nn.Module]) -> list[OpSite]:
    """Every site, in module order: the modules that declare one (``op_site_kind`` and
    ``op_site()``), then the plain convolutions and linear layers outside them."""
    declared = [n for n, m in modules.items() if n and hasattr(m, "op_site_kind") and hasattr(m, "op_site")]
    shapes = _io_shapes(found.model, found.example_inputs, declared) if declared else {}
    sites = {n: OpSite(n, modules[n].op_site_kind, *shapes[n], modules[n].op_site(), replace_only=False)
             for n in declared if n in shapes}
    inside = tuple(f"{n}." for n in declared)
    for op in found.trace.param_ops:
        name = op.weight.rpartition(".")[0]
        if name not in sites and not name.startswith(inside):
            site = _layer_site(op, modules.get(name), name)
            if site is not None:
                sites[name] = site
    order = {n: i for i, n in enumerate(modules)}
    return sorted(sites.values(), key=lambda s: order[s.name])


def _owner(term: Term, sites: dict[str, OpChoice]) -> OpChoice | None:
    """The site whose module computes ``term`` (by the parameter it reads, else its module)."""
    for name in (term.weight or "", term.module):
        while name:
            if name in sites:
                return sites[name]
            name = name.rpartition(".")[0]
    return None


def _io_shapes(model: nn.Module, inputs: tuple, names: list[str]) -> dict[str, tuple[tuple, tuple]]:
    """Input and output shape of each named module in one forward pass (modules run once each)."""
    shapes, hooks = {}, []
    for name in names:
        def record(mod, args, out, name=name):
            shapes.setdefault(name, (tuple(args[0].shape), tuple(out.shape)))
        hooks.append(model.get_submodule(name).register_forward_hook(record))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _layer_site(op, module: nn.Module | None, name: str) -> OpSite | None:
    """The op's site when its module can be swapped whole (a plain Conv2d or Linear)."""
    if op.op == "linear" and isinstance(module, nn.Linear) and op.weight == f"{name}.weight":
        return OpSite(name, "linear", op.in_shape, op.out_shape,
                      {"in": module.in_features, "out": module.out_features, "bias": module.bias is not None})
    if op.op == "conv" and type(module) is nn.Conv2d and op.weight == f"{name}.weight" \
            and module.padding_mode == "zeros" and not op.attrs["transposed"]:
        a = op.attrs
        return OpSite(name, "conv", op.in_shape, op.out_shape,
                      {"in": module.in_channels, "out": module.out_channels, "kernel": tuple(module.kernel_size),
                       "stride": tuple(a["stride"]), "padding": tuple(a["padding"]), "dilation": tuple(a["dilation"]),
                       "groups": a["groups"], "bias": module.bias is not None})
    return None


def _cost(site: OpSite, option: dict, original: nn.Module, seen: dict | None = None) -> OptionCost:
    """MACs and params of ``option`` at ``site``, counted by tracing it on the site's input.  A
    candidate is built from the site's arguments alone, so ``seen`` keeps its cost for every site
    of the same kind, shape and arguments (a cell network's edges repeat cell after cell)."""
    if option["op"] != ITSELF and seen is not None:
        args = sorted((k, v) for k, v in site.attrs.items() if k not in RULE_ATTRS)
        key = (site.kind, site.in_shape, repr(args), repr(sorted(option.items())))
        if key not in seen:
            seen[key] = _cost(site, option, original)
        return seen[key]
    like = module_like(original)
    module = original if option["op"] == ITSELF else build_option(site, option).to(**like)
    space = build_space(module.eval(), torch.zeros(site.in_shape, **like), kinds=())
    return space.cost.full("flops"), space.cost.full("params")
