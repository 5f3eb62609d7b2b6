"""scs's gate parametrization: a logit per gate, its temperature and the epoch's draw, for every
kind of choice it gates (DESIGN 5.1).

Every free slot of a weight-ranked kind (a channel unit, a kernel ring) is a *unit gate* (penalty
``lambda1``); every residual block a *layer gate* (``lambda2``).  A gate's value is
``sigma(beta * s) * q``: ``q ~ Bernoulli(sigma(beta * s))`` is drawn once per epoch and held,
``beta = beta0 * gamma^t`` with ``t`` the epochs the gate was on (or ``t = epoch``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..budget import decide
from ..importance import get_importance
from ..space import Space
from ..space.kinds import get_kind
from ..gates import GateController

LAYERS = "depth"


class KindLogits(nn.Module):
    """The gates of one kind: logits ``s`` over its free slots ``free``, draws ``q``, counters ``t``."""

    def __init__(self, free: np.ndarray, size: int, init: torch.Tensor) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("free", torch.from_numpy(free).long())
        if init.numel():
            self.s = nn.Parameter(init)
        else:  # nothing to learn: an empty buffer keeps DDP free of unused parameters
            self.register_buffer("s", init)
        self.register_buffer("q", torch.ones(len(free)))
        self.register_buffer("t", torch.zeros(len(free)))
        self.register_buffer("ever_on", init > 0)

    def full(self, values: torch.Tensor, fill: float = 1.0) -> torch.Tensor:
        """``values`` over the free slots as a vector over every slot (``fill`` elsewhere)."""
        out = torch.full((self.size,), fill, dtype=values.dtype, device=values.device)
        return out.index_put((self.free.to(values.device),), values)


class ScsLogits(GateController):
    """Gate logits, per-gate temperature counters and the epoch's draw, per gated kind."""

    def __init__(self, space: Space, cfg, epochs: int, prior: dict[str, np.ndarray] | None = None) -> None:
        """``prior``: per unit kind, one value in [-1, 1] per free slot scaling ``start_logit``
        (``init: importance``)."""
        super().__init__()
        self.unit_kinds = [k for k in space if get_kind(k).weight_scored and (k != "channels" or cfg.channels)]
        gated = self.unit_kinds + ([LAYERS] if cfg.layers and LAYERS in space else [])
        self.gates = nn.ModuleDict()
        for kind in gated:
            free = np.flatnonzero(space[kind].free())
            sign = torch.ones(len(free))
            if prior is not None and kind in prior and len(free):
                sign = torch.as_tensor(prior[kind], dtype=torch.float32).clone()
            if cfg.mode == "grow":
                sign = _grow_seeds(space, kind, free)
            self.gates[kind] = KindLogits(free, space[kind].size, cfg.start_logit * sign)
        self.beta0 = cfg.beta0
        self.per_gate = cfg.temperature == "per_gate"
        self.log_gamma = math.log(cfg.beta_final / cfg.beta0) / max(epochs, 1)

    def __getitem__(self, kind: str) -> KindLogits:
        return self.gates[kind]

    def soft(self, ahead: bool = False) -> dict[str, torch.Tensor]:
        """sigma(beta * s) per kind over its free slots; ``ahead``: at the temperatures the next
        epoch's draw will use (the counters after this epoch's increment)."""
        out = {}
        for kind, g in self.gates.items():
            t = g.t + (g.q if self.per_gate else 1) if ahead else g.t
            out[kind] = torch.sigmoid(self.beta0 * torch.exp(self.log_gamma * t) * g.s)
        return out

    def forward(self) -> dict[str, torch.Tensor]:
        return {kind: self.gates[kind].full(value * self.gates[kind].q) for kind, value in self.soft().items()}

    def draw(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A new ``q`` for every gate (held until the next draw); returns them (on the CPU)."""
        soft = {k: v.detach().cpu() for k, v in self.soft().items()}
        drawn = {k: torch.bernoulli(v, generator=generator) for k, v in soft.items()}
        for kind, q in drawn.items():
            self.gates[kind].q.copy_(q)
        return drawn

    def keep(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Values over the free slots of each kind as vectors over the whole space (1 elsewhere)."""
        return {kind: self.gates[kind].full(v.double().cpu().to(self.gates[kind].free.device))
                for kind, v in values.items()}

    def count_epoch(self, epoch: int, per_gate: bool) -> None:
        """The temperature counters after an epoch: on-epochs per gate, or ``epoch + 1`` for all."""
        for g in self.gates.values():
            if per_gate:
                g.t += g.q
            else:
                g.t.fill_(epoch + 1)

    def penalty(self, lambda1: float, lambda2: float) -> torch.Tensor:
        soft = self.soft()
        total = sum(v.sum() for k, v in soft.items() if k != LAYERS) * lambda1
        return total + (lambda2 * soft[LAYERS].sum() if LAYERS in soft else 0.0)


def _grow_seeds(space: Space, kind: str, free: np.ndarray) -> torch.Tensor:
    """Grow mode's start: one active unit per channel group, one active block per stage, every
    other gate off."""
    sign = -torch.ones(len(free))
    first: dict = {}
    if kind == "channels":
        group_of = space[kind].unit_group()
        for pos, u in enumerate(free.tolist()):
            first.setdefault(int(group_of[u]), pos)
    elif kind == LAYERS:
        for i, b in enumerate(space[kind].blocks):
            first.setdefault(b.stage, i)
    sign[list(first.values())] = 1
    return sign


def importance_prior(model: nn.Module, space: Space, target: float, *, what: str = "flops",
                     round_to: int | None = None) -> dict[str, np.ndarray]:
    """Per unit kind, one value in [-1, 1] per free slot, for ``init: importance``.

    The sign is the ``prune`` baseline's decision at the budget (magnitude, normalised per site):
    + kept, - dropped.  The size is the slot's rank by that score inside its side, counted from the
    cut: the kept slot with the lowest score gets 1/n_kept, the best one 1; the dropped slot with
    the highest score gets -1/n_dropped, the worst one -1.  Slots next to the cut start undecided
    (sigma(beta * s) near 1/2), slots far from it start near 0 or 1.
    """
    scores = get_importance("magnitude")(model, space)
    keep = decide(space, scores, target, what=what, round_to=round_to).keep(space)
    out = {}
    for kind, s in scores.items():
        free = np.flatnonzero(space[kind].free())
        kept = keep[kind][free] > 0.5
        prior = np.zeros(len(free))
        for side, sign in ((kept, 1.0), (~kept, -1.0)):
            idx = np.flatnonzero(side)
            order = np.argsort(sign * s[free[idx]], kind="stable")  # nearest the cut first
            prior[idx[order]] = sign * np.arange(1, len(idx) + 1) / max(len(idx), 1)
        out[kind] = prior
    return out
