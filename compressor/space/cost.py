"""Differentiable FLOPs and parameter counts of any (soft) decision over a :class:`Space`.

FLOPs are multiply-accumulates of the ops fvcore counts (conv, linear/matmul, norms, adaptive
average pooling, upsampling) plus scaled-dot-product attention, which fvcore skips unless the
handle from :mod:`compressor.export.flops` is registered.
"""
from __future__ import annotations

import numpy as np
import torch

from .records import CostTerm


class _Terms:
    """Sum over terms of ``coef * prod_f (sum_u counts[u] * keep[u]) * prod_blocks keep_block * live``,
    ``live = 1 - prod_{b in live_blocks} (1 - keep_b)`` (1 for a term without live blocks, or one
    naming a block the space no longer has: that block always stays)."""

    def __init__(self, terms: list[CostTerm], blocks, num_units: int) -> None:
        idx, cnt, seg, coef = [], [], [], []
        self.n_factors = []
        fpos = 0
        term_factors = []
        for t in terms:
            fids = []
            for units, counts in t.factors:
                idx.append(np.where(units >= 0, units, num_units))
                cnt.append(counts)
                seg.append(np.full(len(units), fpos))
                fids.append(fpos)
                fpos += 1
            term_factors.append(fids)
            coef.append(t.coef)
        width = max([len(f) for f in term_factors] + [1])
        one = fpos  # index of a constant-one factor
        self.factor_of_term = torch.tensor([f + [one] * (width - len(f)) for f in term_factors] or [[0]])
        self.idx = torch.from_numpy(np.concatenate(idx)).long() if idx else torch.zeros(0, dtype=torch.long)
        self.cnt = torch.from_numpy(np.concatenate(cnt)).double() if cnt else torch.zeros(0, dtype=torch.double)
        self.seg = torch.from_numpy(np.concatenate(seg)).long() if seg else torch.zeros(0, dtype=torch.long)
        self.coef = torch.tensor(coef or [0.0], dtype=torch.double)
        self.n_f = fpos
        # block membership: term -> block indices (padded with a constant-one slot)
        nb = len(blocks)
        member = [[i for i, b in enumerate(blocks) if b.contains(t.module)] for t in terms]
        bw = max([len(m) for m in member] + [1])
        self.block_of_term = torch.tensor([m + [nb] * (bw - len(m)) for m in member] or [[nb]])
        # liveness: slot nb holds keep 1 (always live), slot nb + 1 keep 0 (padding)
        index = {b.name: i for i, b in enumerate(blocks)}
        alive = [[index[b] for b in sorted(t.live_blocks)]
                 if t.live_blocks and all(b in index for b in t.live_blocks) else [nb] for t in terms]
        lw = max([len(a) for a in alive] + [1])
        self.live_of_term = torch.tensor([a + [nb + 1] * (lw - len(a)) for a in alive] or [[nb]])
        self.empty = not terms

    def __call__(self, keep: torch.Tensor, block_keep: torch.Tensor) -> torch.Tensor:
        if self.empty:
            return keep.new_zeros((), dtype=torch.double)
        k = torch.cat([keep.double(), keep.new_ones(1, dtype=torch.double)])
        fv = torch.zeros(self.n_f + 1, dtype=torch.double, device=k.device)
        fv = fv.index_add(0, self.seg.to(k.device), self.cnt.to(k.device) * k[self.idx.to(k.device)])
        fv = fv.clone()
        fv[self.n_f] = 1.0
        per_term = fv[self.factor_of_term.to(k.device)].prod(dim=1) * self.coef.to(k.device)
        bk = torch.cat([block_keep.double(), block_keep.new_tensor([1.0, 0.0], dtype=torch.double)])
        per_term = per_term * bk[self.block_of_term.to(k.device)].prod(dim=1)
        per_term = per_term * (1 - (1 - bk[self.live_of_term.to(k.device)]).prod(dim=1))
        return per_term.sum()


class CostModel:
    """FLOPs (MACs) and params of a space as functions of per-unit and per-block keep values.

    ``keep`` holds one value per flat unit of the space (1 = kept, 0 = removed, or a probability);
    ``block_keep`` one per block.  Both may require grad: the result is differentiable.

    Example:
        >>> cm = space.cost
        >>> full = cm.flops()                        # the original model
        >>> half = cm.flops(keep=torch.full((space.num_units,), 0.5))
    """

    def __init__(self, space) -> None:
        self.space = space
        self._flops = _Terms(space.flops_terms, space.blocks, space.num_units)
        self._params = _Terms(space.param_terms, space.blocks, space.num_units)
        self._full_cost: dict[str, float] = {}

    def _defaults(self, keep, block_keep):
        if keep is None:
            keep = torch.ones(self.space.num_units, dtype=torch.double)
        if block_keep is None:
            block_keep = torch.ones(len(self.space.blocks), dtype=torch.double)
        return keep, block_keep

    def flops(self, keep: torch.Tensor | None = None, block_keep: torch.Tensor | None = None) -> torch.Tensor:
        return self._flops(*self._defaults(keep, block_keep))

    def params(self, keep: torch.Tensor | None = None, block_keep: torch.Tensor | None = None) -> torch.Tensor:
        return self._params(*self._defaults(keep, block_keep))

    def fraction(self, what: str, keep: torch.Tensor | None = None,
                 block_keep: torch.Tensor | None = None) -> torch.Tensor:
        """``what`` ("flops" or "params") of a (soft) decision as a fraction of the full model's;
        differentiable like :meth:`flops`."""
        cost = self.flops if what == "flops" else self.params
        if what not in self._full_cost:
            self._full_cost[what] = float(cost())
        return cost(keep, block_keep) / self._full_cost[what]

    def breakdown(self, what: str = "flops") -> dict[int, float]:
        """Share of the full cost that each group's units carry (terms split evenly between groups)."""
        terms = self.space.flops_terms if what == "flops" else self.space.param_terms
        unit_group = self.space.unit_group()
        total = 0.0
        shares: dict[int, float] = {}
        for t in terms:
            value = t.coef * float(np.prod([c.sum() for _, c in t.factors])) if t.factors else t.coef
            total += value
            gids = {int(unit_group[u]) for units, _ in t.factors for u in units if u >= 0}
            for g in gids:
                shares[g] = shares.get(g, 0.0) + value / len(gids)
        return {g: v / total for g, v in shares.items()} if total else {}
