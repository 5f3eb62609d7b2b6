"""Differentiable FLOPs and parameter counts of any (soft) decision over a :class:`Space`.

FLOPs are multiply-accumulates of the ops fvcore counts (conv, linear/matmul, norms, adaptive
average pooling, upsampling) plus scaled-dot-product attention, which fvcore skips unless the
handle from :mod:`compressor.export.flops` is registered.

Every cost is a sum of :class:`Term`\\ s over one flat vector of slot values, every kind's slots
side by side.  A term is ``coef * prod_f (sum_s counts_s * v_s) * prod v_scale * live`` with
``live = 1 - prod (1 - v)`` over its liveness slots: channels enter as factors, a residual block
as a scale and as liveness, a kernel window as a factor over its rings.  The tracer records the
terms of the ops that ran; each kind refines them (:meth:`ChoiceKind.refine_terms`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

import numpy as np
import torch

from .kinds import get_kind

CONST = -1  # a slot index meaning "always 1"


@dataclass(frozen=True)
class Factor:
    """``sum counts[i] * v(kind, slots[i])``; a slot of ``CONST`` counts as kept."""

    kind: str
    slots: np.ndarray
    counts: np.ndarray


@dataclass(frozen=True)
class Term:
    """One op's cost (see the module doc).  ``weight`` names the parameter the op reads, if any."""

    op: str
    module: str
    coef: float
    factors: tuple[Factor, ...] = ()
    scale: tuple[tuple[str, int], ...] = ()
    live: tuple[tuple[str, int], ...] | None = None
    op_index: int = -1
    weight: str | None = None
    notes: dict = field(default_factory=dict, compare=False)

    def with_(self, **changes) -> "Term":
        return replace(self, **changes)


class CompiledTerms:
    """Terms turned into index tensors over the flat slot vector (evaluated many times)."""

    def __init__(self, terms: list[Term], offsets: Mapping[str, int], total: int) -> None:
        one, zero = total, total + 1  # slots appended to every value vector: constant 1 and 0
        self.total = total

        def flat(kind: str, slot: int) -> int:  # a kind the space lacks is always kept
            return one if slot == CONST or kind not in offsets else offsets[kind] + slot

        idx, cnt, seg, per_term = [], [], [], []
        for t in terms:
            fids = []
            for f in t.factors:
                fids.append(len(idx))
                seg.append(np.full(len(f.slots), len(idx)))
                base = offsets.get(f.kind)
                idx.append(np.where((f.slots == CONST) | (base is None), one, f.slots + (base or 0)))
                cnt.append(np.asarray(f.counts, dtype=np.float64))
            per_term.append(fids)
        n_f = len(idx)
        width = max([len(f) for f in per_term] + [1])
        self.factor_of_term = torch.tensor([f + [n_f] * (width - len(f)) for f in per_term] or [[n_f]])
        self.idx = torch.from_numpy(np.concatenate(idx)).long() if idx else torch.zeros(0, dtype=torch.long)
        self.cnt = torch.from_numpy(np.concatenate(cnt)) if cnt else torch.zeros(0, dtype=torch.double)
        self.seg = torch.from_numpy(np.concatenate(seg)).long() if seg else torch.zeros(0, dtype=torch.long)
        self.n_f = n_f
        self.coef = torch.tensor([t.coef for t in terms] or [0.0], dtype=torch.double)
        scales = [[flat(k, s) for k, s in t.scale] for t in terms]
        sw = max([len(s) for s in scales] + [1])
        self.scale_of_term = torch.tensor([s + [one] * (sw - len(s)) for s in scales] or [[one]])
        lives = [[flat(k, s) for k, s in t.live] if t.live else [one] for t in terms]
        lw = max([len(v) for v in lives] + [1])
        self.live_of_term = torch.tensor([v + [zero] * (lw - len(v)) for v in lives] or [[one]])
        self.empty = not terms
        self._on: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def _tensors(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if device not in self._on:
            self._on[device] = tuple(t.to(device) for t in (self.idx, self.cnt, self.seg, self.factor_of_term,
                                                            self.coef, self.scale_of_term, self.live_of_term))
        return self._on[device]

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``v``: the flat slot values (double), without the two constant slots."""
        if self.empty:
            return v.new_zeros(())
        return self.per_term(v).sum()

    def per_term(self, v: torch.Tensor) -> torch.Tensor:
        """Every term's value at ``v``, in the order the terms were given."""
        if self.empty:
            return v.new_zeros(0)
        idx, cnt, seg, fot, coef, sot, lot = self._tensors(v.device)
        ext = torch.cat([v, v.new_tensor([1.0, 0.0])])
        fv = torch.zeros(self.n_f + 1, dtype=v.dtype, device=v.device).index_add(0, seg, cnt * ext[idx])
        fv = torch.cat([fv[:-1], fv.new_ones(1)])
        per_term = fv[fot].prod(dim=1) * coef * ext[sot].prod(dim=1)
        return per_term * (1 - (1 - ext[lot]).prod(dim=1))


Values = Mapping[str, torch.Tensor]


class CostModel:
    """FLOPs (MACs) and params of a space as functions of slot values keyed by kind.

    A kind missing from ``values`` keeps every slot (value 1).  Values may require grad: the
    result is differentiable.

    Example:
        >>> full = space.cost.flops()                                   # the original model
        >>> half = space.cost.flops({"channels": torch.full((n,), 0.5)})
    """

    def __init__(self, space) -> None:
        self.space = space
        self.offsets: dict[str, int] = {}
        total = 0
        for kind, choices in space.items():
            self.offsets[kind] = total
            total += choices.size
        self.total = total
        self.flops_terms = space.refined_terms(space.flops_terms, "flops")
        self.param_terms = space.refined_terms(space.param_terms, "params")
        self._flops = CompiledTerms(self.flops_terms, self.offsets, total)
        self._params = CompiledTerms(self.param_terms, self.offsets, total)
        self._full: dict[str, float] = {}
        self._measured: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}

    def attach(self, what: str, cost: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Make ``what`` (``"latency"``) a cost like FLOPs: ``cost`` maps the flat slot vector
        (:meth:`flat`) to a differentiable scalar (:mod:`compressor.latency`)."""
        if what in ("flops", "params"):
            raise ValueError(f"{what} is built in")
        self._measured[what] = cost
        self._full.pop(what, None)

    @property
    def kinds_of_cost(self) -> tuple[str, ...]:
        return ("flops", "params", *self._measured)

    def flat(self, values: Values | None = None) -> torch.Tensor:
        """The flat slot vector of ``values`` (a missing kind at the model as it is), on their device."""
        values = values or {}
        like = next((v for v in values.values() if isinstance(v, torch.Tensor)), None)
        device = like.device if like is not None else torch.device("cpu")
        parts = []
        for kind, choices in self.space.items():
            v = values.get(kind)
            if v is None:
                parts.append(torch.as_tensor(get_kind(kind).keep(choices, None), dtype=torch.double, device=device))
            else:
                v = torch.as_tensor(v, device=device).double().reshape(-1)
                if v.numel() != choices.size:
                    raise ValueError(f"{kind}: expected {choices.size} values, got {v.numel()}")
                parts.append(v)
        unknown = set(values) - set(self.offsets)
        if unknown:
            raise ValueError(f"values for kinds this space does not have: {sorted(unknown)}")
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.double, device=device)

    def flops(self, values: Values | None = None) -> torch.Tensor:
        return self._flops(self.flat(values))

    def params(self, values: Values | None = None) -> torch.Tensor:
        return self._params(self.flat(values))

    def of(self, what: str, values: Values | None = None) -> torch.Tensor:
        """``what`` ("flops", "params" or an attached cost) of ``values``."""
        if what in self._measured:
            return self._measured[what](self.flat(values))
        if what not in ("flops", "params"):
            raise ValueError(f"unknown cost {what!r}; expected {' or '.join(self.kinds_of_cost)}"
                             + ("" if what != "latency" else " (a latency cost is attached by a latency budget)"))
        return self.flops(values) if what == "flops" else self.params(values)

    def full(self, what: str) -> float:
        """The original model's ``what``."""
        if what not in self._full:
            self._full[what] = float(self.of(what))
        return self._full[what]

    def fraction(self, what: str, values: Values | None = None) -> torch.Tensor:
        """``what`` of ``values`` as a fraction of the full model's; differentiable."""
        return self.of(what, values) / self.full(what)

    def terms(self, what: str) -> list[Term]:
        return self.flops_terms if what == "flops" else self.param_terms
