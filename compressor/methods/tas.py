"""``tas``: transformable architecture search (Dong & Yang, NeurIPS 2019; DESIGN 5.2).

Algorithm (the searchable shape and its relaxation are in :mod:`.tas_space`):

    rank every group's units by importance of the trained original (a width keeps a prefix)
    split the training set per class: D_w (weights), D_a (architecture)
    for epoch e of E:  tau = tau_min + (tau_max - tau_min) * (1 + cos(pi e / E)) / 2
        for each (batch_a from D_a, batch_w from D_w):
            architecture step (Adam on alpha, beta; first or second order, train/bilevel.py):
                L_a = CE(batch_a) + lambda_cost * L_cost  [+ SD term]
                L_cost = -log E[F] if F_argmax < R - t;  +log E[F] if F_argmax > R;  else 0
            weight step (the trainer's SGD):  L_w = CE(batch_w)  [+ SD term]
    decision: argmax width per group, argmax depth per stage; fitted to the budget if it misses
    the band [R - t, R] (the report says by how much); then slice and train the found network
    with KD from the original (``distill.teacher: auto``), from the sliced weights or re-initialised.

E[F] is the cost model at P(unit kept), P(block kept) (products of expected widths, a block's
cost weighted by the probability that its stage's depth reaches it); R the budget; t the
tolerance (5% of the full cost).  SD: self-distillation with voting teachers (DESIGN 5.4),
one per-sample buffer for D_w and one for D_a.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..budget import fit_to_budget
from ..gates.outputs import first_output
from ..data import split_dataset
from ..decision import Decision
from ..gates import ControlledModel, attach_gates
from ..importance import get_importance
from ..recipe import TasConfig
from ..space import Space
from ..train.bilevel import ArchitectureStep
from ..train.self_distill import VotingTeachers
from .base import Method, SearchContext, register_method
from .tas_space import TasArchitecture


@register_method("tas")
class TasMethod(Method):
    """Searches widths and depths on a held-out split, then decides by argmax."""

    config: TasConfig
    has_arch_step = True
    distills_by_default = True

    def __init__(self, config: TasConfig, space: Space) -> None:
        super().__init__(config, space)
        self.arch: TasArchitecture | None = None
        self.controlled: ControlledModel | None = None
        self.arch_opt: ArchitectureStep | None = None
        self.voting: dict[str, VotingTeachers] = {}
        self.ctx: SearchContext | None = None
        self.epoch, self.epochs = 0, 1
        self.live: dict[str, float] = {}
        self._block_index = {b.name: i for i, b in enumerate(space.blocks)}

    # -- the algorithm ---------------------------------------------------------------------------
    def begin_epoch(self, epoch: int, epochs: int) -> dict[str, float]:
        c = self.config
        self.epoch, self.epochs = epoch, epochs
        self.arch.tau = c.tau_min + (c.tau_max - c.tau_min) * (1 + math.cos(math.pi * epoch / max(epochs, 1))) / 2
        return {"tau": self.arch.tau}

    def arch_step(self, held_out, batch) -> None:
        trainer = self.ctx.trainer
        for p in self.arch.parameters():
            p.requires_grad_(True)
        try:
            with self.arch.fixed_sample():
                self.live["arch_loss"] = self.arch_opt.step(
                    lambda: self._loss(held_out, "arch", cost=True, record=True),
                    lambda: self._loss(batch, "weights", cost=False, record=False),
                    weights=trainer.optimizer)
        finally:
            for p in self.arch.parameters():
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
        """TAS's banded cost loss on the expected cost (a fraction of the full model's)."""
        expected = self._fraction(*self.arch.expected_keep())
        current = float(self._fraction(*self.arch.argmax_keep()))
        self.live["cost"] = current
        target, band = self.ctx.budget.target, self.config.tolerance
        if current < target - band:
            return -torch.log(expected)
        if current > target:
            return torch.log(expected)
        return expected * 0

    def extra_loss(self, model, outputs, targets, indices) -> torch.Tensor | None:  # noqa: ARG002
        return self._self_distill("weights", outputs, indices, record=True)

    def _self_distill(self, buffer: str, outputs: torch.Tensor, indices: torch.Tensor, record: bool):
        vt = self.voting.get(buffer)
        if vt is None:
            return None
        sd = self.config.self_distill
        loss = sd.weight * vt.loss(outputs, indices) if self.epoch >= math.floor(sd.warmup * self.epochs) else None
        if record:
            vt.record(outputs, indices)
        return loss

    def end_epoch(self, epoch: int, epochs: int) -> dict[str, float]:  # noqa: ARG002
        for vt in self.voting.values():
            vt.end_epoch(self.ctx.trainer.dist)
        with torch.no_grad():
            return {"expected_cost": float(self._fraction(*self.arch.expected_keep())),
                    "argmax_cost": float(self._fraction(*self.arch.argmax_keep()))}

    def step_metrics(self) -> dict[str, float]:
        return dict(self.live)  # the argmax cost and the last architecture loss

    # -- plumbing --------------------------------------------------------------------------------
    def attach(self, model: nn.Module, ctx: SearchContext, sizes: tuple[int, int] = (0, 0)) -> ControlledModel:
        """The searchable network: ``model`` gated, with the architecture as its controller, the
        architecture optimizer, and voting-teacher buffers for ``sizes`` (weight, arch) samples."""
        cfg = self.config
        self.ctx = ctx
        scores = get_importance("magnitude")(model, self.space)
        gates = attach_gates(model, self.space)
        head_start = None
        if cfg.init == "budget":  # the one-shot magnitude fit's widths start ahead
            fit = fit_to_budget(self.space, scores, ctx.budget.target, what=ctx.budget.what, round_to=ctx.round_to,
                                normalize=True)
            head_start = {name: len(kept) for name, kept in fit.groups.items()}
        self.arch = TasArchitecture(self.space, cfg, scores, round_to=ctx.round_to, mixable=gates.mixable,
                                    head_start=head_start)
        self.controlled = ControlledModel(gates, self.arch)
        for p in self.arch.parameters():  # the weight optimizer never sees them
            p.requires_grad_(False)
        self.arch_opt = ArchitectureStep([self.arch.alpha, self.arch.beta], lr=cfg.arch_lr, betas=cfg.arch_betas,
                                         weight_decay=cfg.arch_weight_decay, order=cfg.order,
                                         dist=ctx.trainer.dist)
        if cfg.self_distill.enabled:
            classes = ctx.num_classes or _num_outputs(model, ctx)
            self.voting = {"weights": VotingTeachers(sizes[0], classes, cfg.self_distill.k),
                           "arch": VotingTeachers(sizes[1], classes, cfg.self_distill.k)}
        return self.controlled

    def search(self, model: nn.Module, ctx: SearchContext, *, epochs_cfg, checkpoint=None,
               resume: bool = False) -> tuple[nn.Module, Decision, dict]:
        weight_set, arch_set = split_dataset(ctx.train_set, self.config.split, seed=ctx.seed)
        original = {k: v.detach().clone() for k, v in model.state_dict().items()} \
            if self.config.final_init == "original" else None
        self.attach(model, ctx, (len(weight_set), len(arch_set)))
        # No eval-mode validation during the search: it would run the argmax shape with batch
        # statistics gathered under width and depth mixtures, and read near chance whatever the
        # search does.  The architecture steps' held-out half and the argmax cost are its signals.
        history = ctx.trainer.fit(self.controlled, weight_set, epochs_cfg, stage="search", batch_size=ctx.batch_size,
                                  hooks=self, checkpoint=checkpoint, resume=resume,
                                  arch_set=arch_set, criterion=ctx.criterion)
        decision, summary = self.decide(ctx)
        summary["history"] = [h.row() for h in history]
        net = self.controlled.release()
        if original is not None:  # the found shape starts from the trained original's weights
            net.load_state_dict(original)
        return net, decision, summary

    def decide(self, ctx: SearchContext) -> tuple[Decision, dict]:
        """The argmax architecture; fitted to the budget when it lies outside [R - t, R]."""
        units, blocks = (v.cpu() for v in self.arch.argmax_keep())
        keep = units.numpy() > 0.5
        removed = [b.name for b, k in zip(self.space.blocks, blocks.tolist()) if k < 0.5]
        groups = {g.name: np.flatnonzero(keep[g.offset:g.offset + g.size]).tolist()
                  for g in self.space.groups if g.prunable and not keep[g.offset:g.offset + g.size].all()}
        decision = Decision(groups, removed)
        found = float(self._fraction(units, blocks))
        target, band = ctx.budget.target, self.config.tolerance
        fitted = not target - band <= found <= target
        if fitted:
            prob, block_prob = (v.detach().cpu() for v in self.arch.expected_keep())
            # too small even at full width: bring back the likeliest removed blocks first
            by_prob = sorted(removed, key=lambda n: -float(block_prob[self._block_index[n]]))
            while by_prob and float(self._fraction(torch.ones_like(units), Decision({}, by_prob).block_vector(
                    self.space))) < target - band:
                by_prob.pop(0)
            removed = sorted(by_prob)
            decision = fit_to_budget(self.space, 2.0 * keep + prob.numpy(), target, what=ctx.budget.what,
                                     round_to=ctx.round_to, removed_blocks=removed)
        widths, depths = self.arch.argmax_shape()
        sizes = {g.name: g.size for g in self.space.groups}
        per_stage: dict[str, int] = {}
        for b in self.space.blocks:
            per_stage[b.stage] = per_stage.get(b.stage, 0) + 1
        summary = {"argmax_cost": found, "fitted_to_budget": fitted, "argmax_miss": found - target,
                   "searched_groups": len(widths), "cwi_groups": int(self.arch.cwi_group.sum()),
                   "widths": {n: f"{w}/{sizes[n]}" for n, w in widths.items()},
                   "depths": {n: f"{d}/{per_stage[n]}" for n, d in depths.items()},
                   "blocks_removed": sorted(decision.removed_blocks), **self.arch.movement()}
        if summary["groups_moved"].startswith("0/") and summary["stages_moved"].startswith("0/"):
            start = "the one-shot magnitude shape (init: budget)" if self.config.init == "budget" else "the initial shape"
            summary["note"] = (f"the search ended where it started: no argmax width or depth changed (logits moved at "
                               f"most {summary['logit_move_max']:.3g}), so the decision is {start}; more search steps "
                               "or a larger method.arch_lr let it move")
        if self.voting:
            summary["voting_teachers_mb"] = sum(v.memory_bytes for v in self.voting.values()) / 2**20
        return decision, summary

    def removable_blocks(self) -> list[str]:
        return [b.name for b in self.space.blocks] if self.config.depth else []

    def finalize(self, model: nn.Module) -> nn.Module:
        """The found network's starting weights: as sliced (searched or original), or
        re-initialised (the paper)."""
        if self.config.final_init == "scratch":
            torch.manual_seed(self.ctx.seed if self.ctx else 0)
            for m in model.modules():
                if hasattr(m, "reset_parameters") and m is not model:
                    m.reset_parameters()
        return model

    def _fraction(self, units: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        return self.space.cost.fraction(self.ctx.budget.what, units, blocks)

    def state_dict(self) -> dict:
        return {"arch_optimizer": self.arch_opt.state_dict(),
                "voting": {k: v.state_dict() for k, v in self.voting.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.arch_opt.load_state_dict(state["arch_optimizer"])
        for k, v in state.get("voting", {}).items():
            self.voting[k].load_state_dict(v)


def _num_outputs(model: nn.Module, ctx: SearchContext) -> int:
    x, _ = ctx.train_set[0]
    device = next(model.parameters()).device
    with torch.no_grad():
        was = model.training
        out = first_output(model.eval()(x.unsqueeze(0).to(device)))
        model.train(was)
    return int(out.shape[1])
