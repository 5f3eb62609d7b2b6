"""What the bilevel searches (``tas``, ``darts``) share: the architecture step on a held-out batch,
its loss (cross-entropy + the banded cost loss + SD-DARTS's voting teachers), the weight step's
extra term, the per-epoch costs and the checkpointed state.

    architecture step (after the warm-up):  L_val = CE + cost_weight * L_cost(E[cost], argmax cost) [+ SD]
                                            first or second order (train/bilevel.py), Adam on alpha
    weight step (the trainer's):            L_train = CE [+ SD]

A subclass builds ``arch`` (the controller), ``controlled`` (the gated model it drives),
``arch_opt`` and ``voting`` in its own setup, and says what the architecture's cost is
(:meth:`cost_fractions`); its config carries ``cost_weight``, ``tolerance``, ``self_distill``.
"""
from __future__ import annotations

import contextlib
import math
from typing import ContextManager

import torch
import torch.nn.functional as F
from torch import nn

from ..gates import ControlledModel
from ..gates.outputs import first_output
from ..train.bilevel import ArchitectureStep, banded_cost_loss
from ..train.self_distill import VotingTeachers, self_distill_term
from .base import Method, SearchContext


class BilevelSearch(Method):
    """A method whose search alternates architecture steps on held-out batches with weight steps."""

    has_arch_step = True
    metrics = ("expected_cost", "argmax_cost")

    def __init__(self, config, space) -> None:
        super().__init__(config, space)
        self.arch: nn.Module | None = None
        self.controlled: ControlledModel | None = None
        self.arch_opt: ArchitectureStep | None = None
        self.voting: dict[str, VotingTeachers] = {}
        self.ctx: SearchContext | None = None
        self.epoch, self.epochs = 0, 1
        self.live: dict[str, float] = {}

    # -- what a subclass says ------------------------------------------------------------------------
    def cost_fractions(self) -> tuple[torch.Tensor, float]:
        """(the expected cost under the architecture's distribution, differentiable; the argmax
        architecture's), as fractions of the full model's."""
        raise NotImplementedError

    def arch_active(self) -> bool:
        """Whether this step takes an architecture step (False during a warm-up)."""
        return True

    def sample_context(self) -> ContextManager:
        """Held around both losses of one architecture step (tas: one Gumbel draw for both)."""
        return contextlib.nullcontext()

    # -- the shared steps ----------------------------------------------------------------------------
    def arch_step(self, held_out, batch) -> None:
        if not self.arch_active():
            return
        for p in self.arch.parameters():
            p.requires_grad_(True)
        try:
            with self.sample_context():
                self.live["arch_loss"] = self.arch_opt.step(
                    lambda: self._loss(held_out, "arch", cost=True, record=True),
                    lambda: self._loss(batch, "weights", cost=False, record=False),
                    weights=self.ctx.trainer.optimizer)
        finally:
            for p in self.arch.parameters():  # the weight optimizer never sees them
                p.requires_grad_(False)

    def _loss(self, batch, buffer: str, *, cost: bool, record: bool) -> torch.Tensor:
        x, y, idx = batch
        with self.ctx.trainer.autocast():
            out = first_output(self.controlled(x))
        loss = F.cross_entropy(out.float(), y)
        if cost and self.config.cost_weight:
            loss = loss + self.config.cost_weight * self.cost_loss().float()
        sd = self._self_distill(buffer, out, idx, record)
        return loss if sd is None else loss + sd

    def cost_loss(self) -> torch.Tensor:
        """TAS's banded cost loss on the expected cost, steered by the argmax architecture's."""
        expected, current = self.cost_fractions()
        self.live["cost"] = current
        return banded_cost_loss(expected, current, self.ctx.budget.target, self.config.tolerance)

    def extra_loss(self, model, outputs, targets, indices) -> torch.Tensor | None:  # noqa: ARG002
        return self._self_distill("weights", outputs, indices, record=True)

    def _self_distill(self, buffer: str, outputs: torch.Tensor, indices: torch.Tensor, record: bool):
        sd = self.config.self_distill
        return self_distill_term(self.voting.get(buffer), outputs, indices, weight=sd.weight, record=record,
                                 active=self.epoch >= math.floor(sd.warmup * self.epochs))

    def make_voting(self, sizes: tuple[int, int], classes: int) -> None:
        """SD-DARTS's buffers for ``sizes`` (weight, arch) samples, when the recipe turns SD on."""
        sd = self.config.self_distill
        self.voting = {"weights": VotingTeachers(sizes[0], classes, sd.k),
                       "arch": VotingTeachers(sizes[1], classes, sd.k)} if sd.enabled else {}

    def end_epoch(self, epoch: int, epochs: int) -> dict[str, float]:  # noqa: ARG002
        for vt in self.voting.values():
            vt.end_epoch(self.ctx.trainer.dist)
        with torch.no_grad():
            expected, current = self.cost_fractions()
        return {"expected_cost": float(expected), "argmax_cost": current}

    def step_metrics(self) -> dict[str, float]:
        return dict(self.live)  # the argmax cost and the last architecture loss

    def state_dict(self) -> dict:
        if self.arch_opt is None:
            return {}
        return {"arch_optimizer": self.arch_opt.state_dict(),
                "voting": {k: v.state_dict() for k, v in self.voting.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state and self.arch_opt is not None:
            self.arch_opt.load_state_dict(state["arch_optimizer"])
            for k, v in state.get("voting", {}).items():
                self.voting[k].load_state_dict(v)
