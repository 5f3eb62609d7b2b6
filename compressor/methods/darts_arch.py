"""The DARTS relaxation over the ``op`` kind: architecture logits ``alpha`` per site over its
options; a site's mixed op weighs option o by ``softmax(alpha)_o`` (DARTS, Liu et al. 2019), or
only its still-allowed options once a progressive stage has dropped the others (P-DARTS).
``alpha`` starts at 1e-3 N(0, 1) (the reference code), or from given per-site logits."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..gates import GateController
from ..space import Space

KIND = "op"


class OpLogits(GateController):
    """``alpha`` (sites x most options, padded) and the mask of each site's allowed options."""

    def __init__(self, space: Space, init_scale: float = 1e-3,
                 start: dict[str, np.ndarray] | None = None) -> None:
        super().__init__()
        choices = space[KIND]
        self.size = choices.size
        self.sites = [s for s in choices.sites if s.frozen is None and len(s.options) > 1]
        width = max((len(s.options) for s in self.sites), default=1)
        index = torch.full((len(self.sites), width), self.size, dtype=torch.long)
        allowed = torch.zeros(len(self.sites), width, dtype=torch.bool)
        for i, s in enumerate(self.sites):
            index[i, :len(s.options)] = torch.from_numpy(s.slots)
            allowed[i, :len(s.options)] = True
        self.register_buffer("index", index)  # slot of (site, option); ``size`` pads
        self.register_buffer("allowed", allowed)
        alpha = torch.randn(len(self.sites), width) * init_scale
        for i, s in enumerate(self.sites):
            if start is not None and s.name in start:
                alpha[i, :len(s.options)] = torch.as_tensor(start[s.name], dtype=alpha.dtype)
        self.alpha = nn.Parameter(alpha)
        start = np.zeros(self.size, dtype=np.float32)
        for s in choices.sites:
            start[s.offset] = 1.0  # sites without a choice stay themselves
        self.register_buffer("start", torch.from_numpy(start))

    def probabilities(self) -> torch.Tensor:
        """softmax(alpha) over each site's allowed options (sites x options)."""
        return F.softmax(self.alpha.float().masked_fill(~self.allowed, -torch.inf), dim=1)

    def values(self, per_site: torch.Tensor) -> torch.Tensor:
        """Per-site option weights as slot values of the whole kind."""
        flat = torch.cat([self.start, self.start.new_zeros(1)]).to(per_site.dtype)  # the last slot: padding
        flat = flat.index_put((self.index.flatten(),), per_site.flatten().masked_fill(~self.allowed.flatten(), 0))
        return flat[:-1]

    def argmax(self) -> torch.Tensor:
        """One-hot slot values of the most probable option per site."""
        p = self.probabilities()
        return self.values(F.one_hot(p.argmax(1), p.shape[1]).to(p.dtype))

    def forward(self) -> dict[str, torch.Tensor]:
        return {KIND: self.values(self.probabilities())}

    def drop(self, keep: int) -> None:
        """P-DARTS: every site keeps only its ``keep`` most probable allowed options."""
        with torch.no_grad():
            p = self.probabilities().masked_fill(~self.allowed, -1.0)
            top = p.topk(min(keep, p.shape[1]), dim=1).indices
            allowed = torch.zeros_like(self.allowed).scatter(1, top, True) & self.allowed
            self.allowed.copy_(allowed)
