"""The DARTS relaxation over the ``op`` kind: architecture logits ``alpha`` per site over its
options; a site's mixed op weighs option o by ``softmax(alpha)_o`` (DARTS, Liu et al. 2019), or
only its still-allowed options once a progressive stage has dropped the others (P-DARTS).
``alpha`` starts at 1e-3 N(0, 1) (the reference code), or from given per-site logits.  With edge
normalisation (PC-DARTS) each edge into a node is further weighed by softmax(beta) over the node's
edges."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..gates import GateController
from ..space import Space

KIND = "op"


class OpLogits(GateController):
    """``alpha`` (rows x most options, padded) and the mask of each row's allowed options.  A row
    is a site, or every site that declares the same ``tie`` (DARTS: the edge at one position in
    every normal cell shares one row); :meth:`probabilities` is per site."""

    def __init__(self, space: Space, init_scale: float = 1e-3,
                 start: dict[str, np.ndarray] | None = None, edge_norm: bool = False) -> None:
        super().__init__()
        choices = space[KIND]
        self.size = choices.size
        self.sites = [s for s in choices.sites if s.frozen is None and len(s.options) > 1]
        ties = [s.site.attrs.get("tie", f"site:{s.name}") for s in self.sites]
        rows = list(dict.fromkeys(ties))
        row = [rows.index(t) for t in ties]
        first = {}
        for i, r in enumerate(row):
            s = self.sites[first.setdefault(r, i)]
            if s.options != self.sites[i].options:
                raise ValueError(f"op sites {s.name!r} and {self.sites[i].name!r} share a tie but not their options")
        width = max((len(s.options) for s in self.sites), default=1)
        index = torch.full((len(self.sites), width), self.size, dtype=torch.long)
        allowed = torch.zeros(len(rows), width, dtype=torch.bool)
        alpha = torch.randn(len(rows), width) * init_scale
        for i, s in enumerate(self.sites):
            index[i, :len(s.options)] = torch.from_numpy(s.slots)
            allowed[row[i], :len(s.options)] = True
            if start is not None and s.name in start and first[row[i]] == i:
                alpha[row[i], :len(s.options)] = torch.as_tensor(start[s.name], dtype=alpha.dtype)
        self.row_keys = rows  # each row's tie (``site:NAME`` for a site of its own)
        self.row_sites = [self.sites[first[r]] for r in range(len(rows))]  # (their options are the row's)
        self.register_buffer("index", index)  # slot of (site, option); ``size`` pads
        self.register_buffer("row", torch.tensor(row, dtype=torch.long))  # site -> its row of alpha
        self.register_buffer("allowed", allowed)
        self.alpha = nn.Parameter(alpha)
        start = np.zeros(self.size, dtype=np.float32)
        for s in choices.sites:
            start[s.offset] = 1.0  # sites without a choice stay themselves
        self.register_buffer("start", torch.from_numpy(start))
        self.beta = self._edge_logits(choices, init_scale) if edge_norm else None

    def _edge_logits(self, choices, init_scale: float) -> nn.Parameter:
        """PC-DARTS's edge normalisation: ``beta``, one row per group of sites (the edges into a
        node; groups whose members share their rows of alpha share one), a logit per member."""
        site_row = {s.name: i for i, s in enumerate(self.sites)}
        groups = [[site_row[choices.sites[i].name] for i in members] for members, _, _ in choices.groups()]
        keys = list(dict.fromkeys(tuple(self.row[m].tolist()) for m in groups))
        edge_row, edge_pos = torch.full((len(self.sites),), -1), torch.zeros(len(self.sites), dtype=torch.long)
        width = max((len(m) for m in groups), default=1)
        allowed = torch.zeros(len(keys), width, dtype=torch.bool)
        for members in groups:
            r = keys.index(tuple(self.row[members].tolist()))
            edge_row[members], edge_pos[members] = r, torch.arange(len(members))
            allowed[r, :len(members)] = True
        self.register_buffer("edge_row", edge_row)
        self.register_buffer("edge_pos", edge_pos)
        self.register_buffer("edge_allowed", allowed)
        return nn.Parameter(torch.randn(len(keys), width) * init_scale)

    def edge_weights(self) -> torch.Tensor:
        """Per site: softmax(beta) over its group at its position (1 outside groups, or without
        edge normalisation)."""
        if self.beta is None:
            return self.alpha.new_ones(len(self.sites)).float()
        b = F.softmax(self.beta.float().masked_fill(~self.edge_allowed, -torch.inf), dim=1)
        inside = self.edge_row >= 0
        return torch.where(inside, b[self.edge_row.clamp_min(0), self.edge_pos], torch.ones_like(b[0, 0]))

    def weights(self) -> torch.Tensor:
        """What each site's mixed op weighs its options by: softmax(alpha), times the site's edge
        weight (PC-DARTS); the strength a discretisation ranks edges by."""
        return self.probabilities() * self.edge_weights()[:, None]

    def probabilities(self) -> torch.Tensor:
        """softmax(alpha) over each site's allowed options (sites x options)."""
        return self._row_probabilities()[self.row]

    def _row_probabilities(self) -> torch.Tensor:
        return F.softmax(self.alpha.float().masked_fill(~self.allowed, -torch.inf), dim=1)

    def values(self, per_site: torch.Tensor) -> torch.Tensor:
        """Per-site option weights as slot values of the whole kind.  Not masked by the allowed
        options: softmax gives a dropped option 0 already, and a discretisation may choose a
        group's ``off`` (``none``) for an edge it does not keep though a stage dropped it."""
        flat = torch.cat([self.start, self.start.new_zeros(1)]).to(per_site.dtype)  # the last slot: padding
        return flat.index_put((self.index.flatten(),), per_site.flatten())[:-1]

    def argmax(self) -> torch.Tensor:
        """One-hot slot values of the most probable option per site."""
        p = self.probabilities()
        return self.values(F.one_hot(p.argmax(1), p.shape[1]).to(p.dtype))

    def forward(self) -> dict[str, torch.Tensor]:
        return {KIND: self.values(self.weights())}

    def drop(self, keep: int) -> None:
        """P-DARTS: every site keeps only its ``keep`` most probable allowed options."""
        with torch.no_grad():
            p = self._row_probabilities().masked_fill(~self.allowed, -1.0)
            top = p.topk(min(keep, p.shape[1]), dim=1).indices
            allowed = torch.zeros_like(self.allowed).scatter(1, top, True) & self.allowed
            self.allowed.copy_(allowed)

    @property
    def site_ties(self) -> list[str]:
        """Each site's tie (its row's key), in the order of :attr:`sites`."""
        return [self.row_keys[r] for r in self.row.tolist()]

    def kept(self) -> dict[str, list[dict]]:
        """Per row (by its tie): the options still allowed, as the sites' option dicts."""
        return {key: [self.row_sites[r].options[j] for j in self.allowed[r].nonzero().flatten().tolist()]
                for r, key in enumerate(self.row_keys)}

    def restrict(self, kept: dict[str, list[dict]]) -> None:
        """Allow only the ``kept`` options (per tie, as :meth:`kept` gives them) in the rows with
        those ties; other rows keep theirs.  P-DARTS carries a stage's survivors to a deeper network."""
        with torch.no_grad():
            for r, key in enumerate(self.row_keys):
                if key in kept:
                    options = self.row_sites[r].options
                    unknown = [o for o in kept[key] if o not in options]
                    if unknown:
                        raise ValueError(f"op sites tied as {key!r} have no option {unknown[0]}")
                    self.allowed[r] = False
                    self.allowed[r, [options.index(o) for o in kept[key]]] = True


def strongest_in_groups(p: torch.Tensor, groups: list[tuple[list[int], int, list[int]]]) -> torch.Tensor:
    """The option index per row of ``p`` (sites x options): the argmax, except in each group
    (member rows, how many keep, each member's ``off`` option), where the ``keep`` members whose
    best option other than ``off`` is strongest take it and the others take ``off`` (DARTS's
    discretisation: a node's top-2 incoming edges by their strongest non-``none`` weight)."""
    choice = p.argmax(1)
    for members, keep, off in groups:
        q = p[members].clone()
        q[torch.arange(len(members)), torch.as_tensor(off)] = -1.0
        best = q.max(1)
        ranked = torch.argsort(best.values, descending=True, stable=True).tolist()
        for rank, m in enumerate(ranked):
            choice[members[m]] = best.indices[m] if rank < keep else off[m]
    return choice
