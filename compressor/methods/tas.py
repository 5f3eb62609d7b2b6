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
from collections import Counter

import torch
from torch import nn

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..budget import decide
from ..data import split_dataset
from ..decision import Decision
from ..gates import ControlledModel, attach_gates
from ..gates.outputs import first_output
from ..importance import get_importance
from ..recipe import MethodConfig, SelfDistillConfig
from ..space import Space
from ..space.kinds import get_kind
from ..train.bilevel import ArchitectureStep
from .base import SearchContext, SearchResult, register_method
from .bilevel import BilevelSearch
from .tas_space import SearchedSite, TasArchitecture, channel_sites


class TasConfig(MethodConfig):
    """Transformable architecture search (Dong & Yang, NeurIPS 2019; DESIGN 5.2): width and depth
    distributions searched on a held-out half of the training set, then the argmax shape is
    sliced and trained (with distillation from the original: ``distill.teacher: auto``)."""

    name: Literal["tas"] = "tas"
    ratios: list[float] = Field([0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], min_length=1,
                                description="Candidate widths as fractions of each channel group, in (0, 1].")
    candidates: int = Field(2, ge=1, description="|I|: distinct widths sampled and mixed per group and step "
                            "(1 gives the width logits no gradient: the paper's failed ablation).")
    mixture: Literal["cwi", "pad"] = Field("pad", description="Align sampled widths by zero padding, or by "
                                           "channel-wise interpolation where the consumer allows it (the paper; "
                                           "its recipes set it). Padding won on trained weights (docs/accuracy.md).")
    depth: bool = Field(True, description="Search the number of leading blocks kept per stage.")
    tau_max: float = Field(5.0, gt=0, description="Gumbel temperature at the start (cosine decay).")
    tau_min: float = Field(0.1, gt=0, description="Gumbel temperature at the end.")
    cost_weight: float = Field(2.0, ge=0, description="lambda_cost of the banded cost loss.")
    tolerance: float = Field(0.05, ge=0, lt=1, description="Band below the budget, as a fraction of the full cost.")
    arch_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the architecture logits.")
    arch_betas: tuple[float, float] = Field((0.5, 0.999), description="Adam betas of the architecture logits.")
    arch_weight_decay: float = Field(1e-3, ge=0, description="Adam weight decay of the architecture logits.")
    order: Literal[1, 2] = Field(1, description="Bilevel order: 1 (first order) or 2 (DARTS unrolled step).")
    split: float = Field(0.5, gt=0, lt=1, description="Share of the training set (per class) used for "
                         "architecture steps; the rest trains the weights.")
    final_init: Literal["searched", "original", "scratch"] = Field(
        "searched", description="Weights the found network starts from: the searched ones sliced, the trained "
        "original's sliced, or a fresh initialisation (the paper).")
    init: Literal["normal", "budget"] = Field(
        "normal", description="Architecture logits at the start: N(0, 0.01) (the paper), or 'budget': the same "
        "plus a head start of 2 for the width the one-shot magnitude fit to the budget keeps in each group and "
        "for full depth, so a short search refines that shape instead of starting from noise.")
    self_distill: SelfDistillConfig = Field(default_factory=SelfDistillConfig)

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: list[float]) -> list[float]:
        bad = [r for r in v if not 0 < r <= 1]
        if bad:
            raise ValueError(f"candidate ratios must be in (0, 1], got {bad}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _taus(self) -> TasConfig:
        if self.tau_min > self.tau_max:
            raise ValueError(f"tau_min {self.tau_min} is above tau_max {self.tau_max}")
        return self


@register_method
class TasMethod(BilevelSearch):
    """transformable architecture search: width and depth distributions on a held-out split, then KD"""

    name = "tas"
    config_class = TasConfig
    config: TasConfig
    distills_by_default = True

    def __init__(self, config: TasConfig, space: Space) -> None:
        super().__init__(config, space)
        self._block_index = {b.name: i for i, b in enumerate(space["depth"].blocks)} if "depth" in space else {}

    # -- the algorithm ---------------------------------------------------------------------------
    def begin_epoch(self, epoch: int, epochs: int) -> dict[str, float]:
        c = self.config
        self.epoch, self.epochs = epoch, epochs
        self.arch.tau = c.tau_min + (c.tau_max - c.tau_min) * (1 + math.cos(math.pi * epoch / max(epochs, 1))) / 2
        return {"tau": self.arch.tau}

    def sample_context(self):
        return self.arch.fixed_sample()  # one Gumbel draw for both losses of an architecture step

    def cost_fractions(self) -> tuple[torch.Tensor, float]:
        return self._fraction(self.arch.expected_keep()), float(self._fraction(self.arch.argmax_keep()))

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
            fit = decide(self.space, scores, ctx.budget.target, what=ctx.budget.what, round_to=ctx.round_to)
            head_start = {name: len(kept) for name, kept in fit.get("channels", {}).items()}
        sites = channel_sites(self.space, cfg, scores["channels"], ctx.round_to, gates.mixable) \
            if "channels" in self.space else []
        sites += [SearchedSite(kind, name, slots, counts) for kind in self.space if kind not in ("channels", "depth")
                  for name, slots, counts in get_kind(kind).nested(self.space[kind]) if len(counts) >= 2]
        self.arch = TasArchitecture(self.space, cfg, sites, head_start=head_start)
        self.sites, self.searched_kinds = sites, sorted({s.kind for s in sites})
        self.controlled = ControlledModel(gates, self.arch)
        for p in self.arch.parameters():  # the weight optimizer never sees them
            p.requires_grad_(False)
        self.arch_opt = ArchitectureStep([self.arch.alpha, self.arch.beta], lr=cfg.arch_lr, betas=cfg.arch_betas,
                                         weight_decay=cfg.arch_weight_decay, order=cfg.order,
                                         dist=ctx.trainer.dist)
        if cfg.self_distill.enabled:
            self.make_voting(sizes, ctx.num_classes or _num_outputs(model, ctx))
        return self.controlled

    def search(self, model: nn.Module, ctx: SearchContext) -> SearchResult:
        weight_set, arch_set = split_dataset(ctx.train_set, self.config.split, seed=ctx.seed)
        original = {k: v.detach().clone() for k, v in model.state_dict().items()} \
            if self.config.final_init == "original" else None
        self.attach(model, ctx, (len(weight_set), len(arch_set)))
        # No eval-mode validation during the search: it would run the argmax shape with batch
        # statistics gathered under width and depth mixtures, and read near chance whatever the
        # search does.  The architecture steps' held-out half and the argmax cost are its signals.
        history = ctx.trainer.fit(self.controlled, ctx.stage("search", train_set=weight_set, val_set=None,
                                                             arch_set=arch_set, hooks=self))
        decision, summary = self.decision(ctx)
        net = self.controlled.release()
        if original is not None:  # the found shape starts from the trained original's weights
            net.load_state_dict(original)
        return SearchResult(net, decision, summary, [h.row() for h in history])

    def decision(self, ctx: SearchContext) -> tuple[Decision, dict]:
        """The argmax architecture; fitted to the budget when it lies outside [R - t, R]."""
        argmax = {k: v.cpu() for k, v in self.arch.argmax_keep().items()}
        decision = Decision.from_keep(self.space, {k: v.numpy() for k, v in argmax.items()})
        found = float(self._fraction(argmax))
        target, band = ctx.budget.target, self.config.tolerance
        fitted = not target - band <= found <= target
        if fitted:
            prob = {k: v.detach().cpu() for k, v in self.arch.expected_keep().items()}
            removed = decision.get("depth", [])
            # too small even at full width: bring back the likeliest removed blocks first
            by_prob = sorted(removed, key=lambda n: -float(prob["depth"][self._block_index[n]]))
            while by_prob and float(self._fraction(Decision({"depth": by_prob}).values(self.space))) < target - band:
                by_prob.pop(0)
            scores = {k: 2.0 * (argmax[k].numpy() > 0.5) + prob[k].numpy() for k in self.searched_kinds}
            decision = decide(self.space, scores, target, what=ctx.budget.what, round_to=ctx.round_to,
                              fixed=Decision({"depth": sorted(by_prob)}))
        widths, depths = self.arch.argmax_shape()
        per_stage = Counter(b.stage for b in self.space["depth"].blocks) if "depth" in self.space else Counter()
        summary = {"argmax_cost": found, "fitted_to_budget": fitted, "argmax_miss": found - target,
                   "searched_groups": len(widths), "cwi_groups": int(self.arch.cwi_group.sum()),
                   "widths": {s.name: f"{widths[s.name]}/{len(s.slots)}" for s in self.sites},
                   "depths": {n: f"{d}/{per_stage[n]}" for n, d in depths.items()},
                   "blocks_removed": sorted(decision.get("depth", [])), **self.arch.movement()}
        if summary["groups_moved"].startswith("0/") and summary["stages_moved"].startswith("0/"):
            start = "the one-shot magnitude shape (init: budget)" if self.config.init == "budget" else "the initial shape"
            summary["note"] = (f"the search ended where it started: no argmax width or depth changed (logits moved at "
                               f"most {summary['logit_move_max']:.3g}), so the decision is {start}; more search steps "
                               "or a larger method.arch_lr let it move")
        if self.voting:
            summary["voting_teachers_mb"] = sum(v.memory_bytes for v in self.voting.values()) / 2**20
        return decision, summary

    def fixed(self) -> Decision:
        return Decision({"depth": self.space["depth"].items()}) if self.config.depth and "depth" in self.space \
            else Decision()

    def finalize(self, model: nn.Module, result: SearchResult, ctx: SearchContext) -> nn.Module:
        """The found network's starting weights: as sliced (searched or original), or
        re-initialised (the paper)."""
        model = super().finalize(model, result, ctx)
        if self.config.final_init == "scratch":
            torch.manual_seed(ctx.seed)
            for m in model.modules():
                if hasattr(m, "reset_parameters") and m is not model:
                    m.reset_parameters()
        return model

    def _fraction(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.space.cost.fraction(self.ctx.budget.what, values)


def _num_outputs(model: nn.Module, ctx: SearchContext) -> int:
    x, _ = ctx.train_set[0]
    device = next(model.parameters()).device
    with torch.no_grad():
        was = model.training
        out = first_output(model.eval()(x.unsqueeze(0).to(device)))
        model.train(was)
    return int(out.shape[1])
