"""Candidate operations for the ``op`` kind: what a convolution, a linear layer or a site a module
declares (e.g. a DARTS cell ``edge``, whose primitives register in models/darts_search.py) may become.

A candidate is registered by name for the kinds of site it applies to (``conv``, ``linear``, ...); at
a site it offers zero or more argument sets (``options``) and builds a module for each with the
site's input and output shapes (``build``).  A choice is serialised as ``{"op": name, **args}``
and rebuilt from this registry, never from code named in a file.  Register your own with
:func:`register_candidate`::

    @register_candidate
    class Halved(Candidate):
        name, kinds = "halved_linear", ("linear",)
        def options(self, site):
            return [{}]
        def build(self, site, **args):
            return nn.Sequential(nn.Linear(site.attrs["in"], site.attrs["out"] // 2), ...)
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

ITSELF = "itself"


@dataclass(frozen=True)
class OpSite:
    """A module whose operation may be replaced: ``kind`` ``conv`` (a 2-D ``nn.Conv2d``) or
    ``linear``; its traced input and output shapes (batch 1) and its arguments (``attrs``)."""

    name: str
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    attrs: dict[str, Any] = field(default_factory=dict, hash=False)
    replace_only: bool = True  # a layer: only options cheaper than it; a declared site: every option

    @property
    def same_shape(self) -> bool:
        return self.in_shape == self.out_shape


class Candidate:
    """A registered candidate: ``name``, the site ``kinds`` it applies to, the argument sets it
    offers at a site, and the module it builds."""

    name: ClassVar[str] = ""
    kinds: ClassVar[tuple[str, ...]] = ()

    def is_skip(self, site: OpSite, **args: Any) -> bool:
        """Whether this option is an identity path at ``site`` (what P-DARTS's cap and skip
        dropout act on)."""
        return False

    def options(self, site: OpSite) -> list[dict[str, Any]]:
        """Argument sets this candidate offers at ``site`` ([] where it does not apply)."""
        raise NotImplementedError

    def build(self, site: OpSite, **args: Any) -> nn.Module:
        raise NotImplementedError


_CANDIDATES: dict[str, Candidate] = {}


def register_candidate(cls: type[Candidate]) -> type[Candidate]:
    """Class decorator: offer ``cls`` at every site of its kinds (an instance is kept)."""
    if not cls.name or not cls.kinds:
        raise ValueError(f"{cls.__name__} needs a name and the site kinds it applies to")
    _CANDIDATES[cls.name] = cls()
    return cls


def unregister_candidate(name: str) -> None:
    _CANDIDATES.pop(name, None)


def candidate_names(kind: str | None = None) -> list[str]:
    """Registered candidates (for one site kind), in registration order."""
    return [n for n, c in _CANDIDATES.items() if kind is None or kind in c.kinds]


def options_at(site: OpSite, names: list[str] | None = None) -> list[dict[str, Any]]:
    """``itself`` first, then every option the registered candidates (``names``: only these)
    offer at ``site``, each as ``{"op": name, **args}``."""
    out = [{"op": ITSELF}]
    for name, c in _CANDIDATES.items():
        if site.kind in c.kinds and (names is None or name in names):
            out += [{"op": name, **args} for args in c.options(site)]
    return out


def build_option(site: OpSite, option: dict[str, Any]) -> nn.Module:
    """The module of ``option`` at ``site``, initialised from a seed that depends on the site and
    the option only (the gated and the sliced model build the same one)."""
    name = option["op"]
    if name not in _CANDIDATES:
        raise ValueError(f"unknown candidate {name!r}; registered: {', '.join(_CANDIDATES)}")
    args = {k: v for k, v in option.items() if k != "op"}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(f"{site.name}|{sorted(option.items())}".encode()))
        return _CANDIDATES[name].build(site, **args)


def module_like(module: nn.Module) -> dict:
    """The dtype and device of a module's weights (a candidate is built to match)."""
    p = next(module.parameters(), None)
    return {"dtype": p.dtype, "device": p.device} if p is not None else {}


def is_skip(site: OpSite, option: dict[str, Any]) -> bool:
    """Whether ``option`` is an identity path at ``site`` (:meth:`Candidate.is_skip`)."""
    c = _CANDIDATES.get(option["op"])
    return c is not None and c.is_skip(site, **{k: v for k, v in option.items() if k != "op"})


def label(option: dict[str, Any]) -> str:
    """``dw_sep`` or ``low_rank(rank=64)``: an option in words."""
    args = ", ".join(f"{k}={v}" for k, v in option.items() if k != "op")
    return f"{option['op']}({args})" if args else option["op"]


# -- the built-in candidates ---------------------------------------------------------------------------
def _conv(site: OpSite, cin: int, cout: int, kernel, stride, padding, dilation=1, groups=1, bias=False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias)


def _padding_for(site: OpSite, extent: int) -> tuple[int, int] | None:
    """Padding per side that keeps the site's output size for a kernel of ``extent`` (its
    dilated size) at the site's stride, or None where no symmetric padding does."""
    a = site.attrs
    pads = []
    for k, d, p in zip(a["kernel"], a["dilation"], a["padding"]):
        cut = (d * (k - 1) + 1 - extent)
        if cut % 2 or p - cut // 2 < 0:
            return None
        pads.append(p - cut // 2)
    return tuple(pads)  # type: ignore[return-value]


def _dense(site: OpSite) -> bool:
    return site.attrs["groups"] == 1


@register_candidate
class DepthwiseSeparable(Candidate):
    """A depthwise k x k convolution (``dilation`` 1, or a 3 x 3 at dilation 2), then a pointwise one."""

    name, kinds = "dw_sep", ("conv",)

    def options(self, site: OpSite) -> list[dict[str, Any]]:
        if not _dense(site) or max(site.attrs["kernel"]) < 3:
            return []
        out = [{}]
        if _padding_for(site, 5) is not None:
            out.append({"kernel": 3, "dilation": 2})
        return out

    def build(self, site: OpSite, kernel: int | None = None, dilation: int = 1) -> nn.Module:
        a = site.attrs
        k = kernel or a["kernel"]
        pad = a["padding"] if kernel is None else _padding_for(site, dilation * (kernel - 1) + 1)
        dil = a["dilation"] if kernel is None else dilation
        return nn.Sequential(_conv(site, a["in"], a["in"], k, a["stride"], pad, dil, groups=a["in"]),
                             _conv(site, a["in"], a["out"], 1, 1, 0, bias=a["bias"]))


@register_candidate
class Pointwise(Candidate):
    """A 1 x 1 convolution at the same stride."""

    name, kinds = "pointwise", ("conv",)

    def options(self, site: OpSite) -> list[dict[str, Any]]:
        return [{}] if _dense(site) and max(site.attrs["kernel"]) > 1 and _padding_for(site, 1) is not None else []

    def build(self, site: OpSite) -> nn.Module:
        a = site.attrs
        return _conv(site, a["in"], a["out"], 1, a["stride"], _padding_for(site, 1), bias=a["bias"])


@register_candidate
class Factorised(Candidate):
    """A k x 1 convolution then a 1 x k one (stride split between them)."""

    name, kinds = "factorised", ("conv",)

    def options(self, site: OpSite) -> list[dict[str, Any]]:
        k = site.attrs["kernel"]
        return [{}] if _dense(site) and k[0] == k[1] >= 3 else []

    def build(self, site: OpSite) -> nn.Module:
        a = site.attrs
        (k, _), (s0, s1), (p0, p1), (d0, d1) = a["kernel"], a["stride"], a["padding"], a["dilation"]
        return nn.Sequential(_conv(site, a["in"], a["out"], (k, 1), (s0, 1), (p0, 0), (d0, 1)),
                             _conv(site, a["out"], a["out"], (1, k), (1, s1), (0, p1), (1, d1), bias=a["bias"]))


@register_candidate
class Skip(Candidate):
    """The identity, where the site's output has its input's shape (the DARTS ``skip_connect``)."""

    name, kinds = "skip", ("conv", "linear")

    def is_skip(self, site: OpSite) -> bool:
        return True

    def options(self, site: OpSite) -> list[dict[str, Any]]:
        return [{}] if site.same_shape else []

    def build(self, site: OpSite) -> nn.Module:
        return nn.Identity()


@register_candidate
class Pool(Candidate):
    """3 x 3 average or max pooling at the site's stride (DARTS's pooling primitives), where the
    channels stay and the output size matches."""

    name, kinds = "pool", ("conv",)

    def options(self, site: OpSite) -> list[dict[str, Any]]:
        ok = site.attrs["in"] == site.attrs["out"] and _padding_for(site, 3) is not None
        return [{"kind": "avg"}, {"kind": "max"}] if ok else []

    def build(self, site: OpSite, kind: str) -> nn.Module:
        a = site.attrs
        if kind == "avg":
            return nn.AvgPool2d(3, a["stride"], _padding_for(site, 3), count_include_pad=False)
        return nn.MaxPool2d(3, a["stride"], _padding_for(site, 3))


@register_candidate
class LowRank(Candidate):
    """Two layers through a rank of 1/2, 1/4 or 1/8 of min(in, out): for a linear layer two linear
    layers, for a 1 x 1 convolution (a linear layer over channels) two 1 x 1 convolutions, the
    first at the site's stride."""

    name, kinds = "low_rank", ("linear", "conv")
    shares = (2, 4, 8)

    def options(self, site: OpSite) -> list[dict[str, Any]]:
        if site.kind == "conv" and (not _dense(site) or max(site.attrs["kernel"]) != 1):
            return []
        small = min(site.attrs["in"], site.attrs["out"])
        return [{"rank": small // s} for s in self.shares if small // s >= 1]

    def build(self, site: OpSite, rank: int) -> nn.Module:
        a = site.attrs
        if site.kind == "linear":
            return nn.Sequential(nn.Linear(a["in"], rank, bias=False), nn.Linear(rank, a["out"], bias=a["bias"]))
        return nn.Sequential(_conv(site, a["in"], rank, 1, a["stride"], a["padding"]),
                             _conv(site, rank, a["out"], 1, 1, 0, bias=a["bias"]))
