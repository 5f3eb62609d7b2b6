"""The ``op`` kind: a convolution or linear layer replaced by another operation.

Sites are the 2-D convolutions (dense, grouped, depthwise) and linear layers the trace ran, each a
module of its own (``nn.Conv2d``, ``nn.Linear``) so that surgery can swap it.  Its options are
``itself`` and every registered candidate that applies (:mod:`compressor.choices.candidates`),
one slot each; a decision has one option at 1 per site.  The gate is a :class:`MixedOp` in the
module's place computing ``sum_o v_o * o(x)`` (a softmax over architecture logits during a
search, one-hot for a decision), so at one-hot values it is exactly the chosen operation:
surgery puts that operation's module there (invariant 2).  Every option's FLOPs and params are
measured on it at the site's traced input (the same counting as every other cost), and enter
the cost model as terms scaled by its slot; the original operation's terms by ``itself``'s.
Candidate costs assume the site's traced widths; a candidate that costs no less than the
original in both FLOPs and params (a factorised 7 x 7 stem on 3 input channels) is not offered.  Payload: ``{site: {"op": name, **args}}`` for
the sites that changed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..space.cost import Term
from ..space.kinds import ChoiceKind, ChoiceSet, register_kind
from ..space.space import build_space
from .candidates import ITSELF, OpSite, build_option, label, options_at

OptionCost = tuple[float, float]  # (MACs, params) at the site


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
        sites, offset, seen = [], 0, set()
        for op in found.trace.param_ops:
            name = op.weight.rpartition(".")[0]
            site = _site(op, modules.get(name), name)
            if site is None or name in seen:
                continue
            seen.add(name)
            priced = [(o, _cost(site, o, modules[name])) for o in options_at(site, allowed)]
            own = priced[0][1]  # a candidate no cheaper than the original in FLOPs and params is no choice
            priced = priced[:1] + [(o, c) for o, c in priced[1:] if c[0] < own[0] or c[1] < own[1]]
            options, costs = tuple(o for o, _ in priced), tuple(c for _, c in priced)
            sites.append(OpChoice(site, options, costs, offset))
            offset += len(options)
        return OpChoices(tuple(sites))

    def refine_terms(self, choices: OpChoices, terms: list[Term], what: str) -> list[Term]:
        own = {}
        for s in choices.sites:
            own[f"{s.name}.weight"] = own[f"{s.name}.bias"] = s.offset  # the original op's terms
        # an option's terms are scaled (and kept alive) as the original op's are: by the
        # residual blocks around the site, refined before this kind
        around = {t.weight: (t.scale, t.live) for t in terms if t.weight in own and t.weight.endswith(".weight")}
        out = [t.with_(scale=t.scale + (("op", own[t.weight]),)) if t.weight in own else t for t in terms]
        col = 0 if what == "flops" else 1
        for s in choices.sites:
            scale, live = around.get(f"{s.name}.weight", ((), None))
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
                like = _like(model.get_submodule(name))
                model.set_submodule(name, build_option(choices.site(name).site, option).to(**like))
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
        lines = [f"op sites: {len(choices.sites)} convolutions and linear layers ({len(free)} with candidates)",
                 f"  {'site':<40} {'FLOPs%':>7}  options (FLOPs% each)"]
        for s in choices.sites if verbose else choices.sites[:40]:
            opts = ", ".join(f"{label(o)} {100 * c[0] / full:.1f}" for o, c in zip(s.options[1:], s.costs[1:]))
            lines.append(f"  {s.name[:40]:<40} {100 * s.costs[0][0] / full:>6.1f}%  {s.frozen or opts or '-'}")
        return lines


class MixedOp(nn.Module):
    """``sum_o v_o * o(x)`` over a site's options, ``v`` its slots' gate values; options at 0 are
    not computed when the values carry no gradient (a decision, not a search).

    With ``partial = K > 1`` (PC-DARTS's partial channels, for a search) only 1/K of the output
    channels are the mixture; the others are the original operation's, as if it had been chosen.
    The window of mixed channels moves by 1/K at every :meth:`advance` (the search calls it once
    per step, so that the several forwards of a second-order step see one window), and over K
    steps each channel is searched once (PC-DARTS moves its fixed slice by a channel shuffle,
    which a trained network cannot absorb).  Candidates compute only the window's channels (:func:`narrow_output`),
    which is where the memory goes down."""

    def __init__(self, original: nn.Module, choice: OpChoice, values) -> None:
        super().__init__()
        self._values = [values]
        self.offset, self.n = choice.offset, len(choice.options)
        self.partial, self.turn = 1, 0
        self.skip_dropout = 0.0  # P-DARTS: dropout on the skip option's output during a search
        self.skips = [i for i, o in enumerate(choice.options) if o["op"] == "skip"]
        like = _like(original)
        self.ops = nn.ModuleList([original] + [build_option(choice.site, o).to(**like) for o in choice.options[1:]])

    def weights(self) -> torch.Tensor:
        return self._values[0]["op"][self.offset:self.offset + self.n]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights().to(device=x.device)
        if self.partial > 1:  # a search's weight and architecture steps alike (PC-DARTS)
            return self._partial(x, w)
        out = None
        for i, op in enumerate(self.ops):
            if not w.requires_grad and float(w[i]) == 0.0:
                continue
            y = self._dropped(i, op(x)) * w[i].to(x.dtype)
            out = y if out is None else out + y
        return out if out is not None else self.ops[0](x) * 0

    def advance(self) -> None:
        """Move the partial-channel window by 1/K (the next search step)."""
        self.turn += 1

    def _dropped(self, i: int, y: torch.Tensor) -> torch.Tensor:
        if self.skip_dropout and i in self.skips:
            return F.dropout(y, self.skip_dropout, self.training)
        return y

    def _partial(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        whole = self.ops[0](x)
        width = whole.shape[1] // self.partial
        start = width * (self.turn % self.partial)
        window = slice(start, start + width)
        mix = whole[:, window] * w[0].to(x.dtype)
        on = (w.detach() != 0).tolist()  # (0: an option a progressive stage dropped)
        for i, op in enumerate(self.ops):
            if i and on[i]:
                mix = mix + self._dropped(i, narrow_output(op, x, window)) * w[i].to(x.dtype)
        return torch.cat([whole[:, :start], mix, whole[:, start + width:]], dim=1)


_CHANNELWISE = (nn.Identity, nn.AvgPool2d, nn.MaxPool2d)


def narrow_output(op: nn.Module, x: torch.Tensor, window: slice) -> torch.Tensor:
    """``op(x)[:, window]``, computing only those output channels where ``op`` allows it: a dense
    convolution (its filters in the window), a sequence (its last module narrowed), an operation
    that acts per channel (on the window of its input); anything else computes every channel."""
    if isinstance(op, nn.Conv2d) and op.groups == 1 and op.padding_mode == "zeros":
        bias = op.bias[window] if op.bias is not None else None
        return F.conv2d(x, op.weight[window], bias, op.stride, op.padding, op.dilation)
    if isinstance(op, nn.Sequential) and len(op):
        return narrow_output(op[-1], op[:-1](x), window)
    if isinstance(op, _CHANNELWISE):
        return op(x[:, window])
    return op(x)[:, window]


def _site(op, module: nn.Module | None, name: str) -> OpSite | None:
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


def _cost(site: OpSite, option: dict, original: nn.Module) -> OptionCost:
    """MACs and params of ``option`` at ``site``, counted by tracing it on the site's input."""
    like = _like(original)
    module = original if option["op"] == ITSELF else build_option(site, option).to(**like)
    space = build_space(module.eval(), torch.zeros(site.in_shape, **like), kinds=())
    return space.cost.full("flops"), space.cost.full("params")


def _like(module: nn.Module) -> dict:
    """The dtype and device of a module's weights (a candidate is built to match)."""
    p = next(module.parameters(), None)
    return {"dtype": p.dtype, "device": p.device} if p is not None else {}
