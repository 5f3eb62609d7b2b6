"""``darts``: operation search on any model (DESIGN 5.5; DARTS, Liu et al. ICLR 2019; P-DARTS, Chen et
al. ICCV 2019; SD-DARTS, arXiv 2302.05629; DNA/LANA for the candidates' initialisation).

    every conv and linear site (and every declared site, e.g. a cell edge) becomes a mixed op
        over itself and its candidates (the op kind)
    blockwise distillation: each candidate learns the original op's output from its input
        (train/blockwise.py); its final loss is its score
    selection: ilp    one option per site maximising -score under the budget (scipy milp)
               random the same program over seeded uniform scores: a random choice in the band
                      [budget - tolerance, budget] (the baseline NAS studies find hard to beat)
               darts  split the training set per class: D_w, D_a; for epoch e of E:
                          after the warm-up, per batch an architecture step (Adam on alpha, first or
                          second order) on D_a:  L = CE + cost_weight * L_cost  [+ SD]
                          L_cost = -log E[F] if F < R - t;  +log E[F] if F > R;  else 0
                          a weight step on D_w (candidates and the rest of the model) [+ SD]
                          P-DARTS: at each stage boundary every site keeps its most probable options
                      argmax per site (a cell's edges: each node's 2 strongest non-none edges,
                      cells of a type sharing alpha); at most skip_cap skips (P-DARTS's cap); then the
                      nearest choice within the budget (the ILP over log-probabilities, with the cell
                      rules as rows) if the argmax misses it (no band below it when cost_weight = 0)
    the chosen ops replace the originals with their trained weights; fine-tune with KD
"""
from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from ..budget import choose_options
from ..choices.candidates import candidate_names, is_skip, label
from ..choices.mixed_op import MixedOp
from ..data import split_dataset
from ..decision import Decision
from ..gates import ControlledModel, attach_gates
from ..recipe import MethodConfig, RecipeError, SelfDistillConfig
from ..space import Space
from ..surgery.slice import slice_model
from ..train.bilevel import ArchitectureStep
from ..train.blockwise import distill_candidates
from ..train.sampling import cycle
from . import darts_report
from .base import SearchContext, SearchResult, register_method
from .bilevel import BilevelSearch
from .darts_arch import KIND, OpLogits, strongest_in_groups
from .darts_stages import alpha_by_site, shallower_stages, skip_dropout_at, stage_epochs
from .followup import followable


class DartsConfig(MethodConfig):
    """Operation search: candidates distilled from the original, chosen by DARTS or an ILP."""

    name: Literal["darts"] = "darts"
    selection: Literal["darts", "ilp", "random"] = Field(
        "darts", description="darts: architecture logits by bilevel search on a held-out split; ilp: one option "
        "per site by the distillation scores under the budget, solved exactly (no search training); random: a "
        "seeded random choice within the budget's band (the baseline).")
    candidates: list[str] | None = Field(None, description="Candidate names to offer (compressor.choices.candidates; "
                                         "None = every registered one).")
    distill_steps: int = Field(200, ge=0, description="Blockwise distillation steps (batches) of the candidates "
                               "(the embedded default is sized so that resnet50 finishes in 20 minutes on 2 cores).")
    distill_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the distillation.")
    order: Literal[1, 2] = Field(1, description="Bilevel order: 1, or 2 (DARTS's unrolled step).")
    init: Literal["distillation", "paper"] = Field("distillation", description="alpha's start: distillation = "
                                                   "-init_scale x each option's distillation score (a short search "
                                                   "refines the candidates' ranking); paper = 1e-3 N(0, 1).")
    init_scale: float = Field(2.0, gt=0, description="alpha = -init_scale x score at init: distillation.")
    arch_lr: float = Field(6e-3, gt=0, description="Adam learning rate of alpha (DARTS 3e-4, PC-DARTS 6e-4 on "
                           "CIFAR and 6e-3 on ImageNet; the last for the embedded default's short search).")
    arch_betas: tuple[float, float] = Field((0.5, 0.999), description="Adam betas of alpha.")
    arch_weight_decay: float = Field(1e-3, ge=0, description="Adam weight decay of alpha.")
    cost_weight: float = Field(2.0, ge=0, description="Weight of the banded cost loss (0: no budget pressure).")
    tolerance: float = Field(0.05, ge=0, lt=1, description="Band below the budget, as a fraction of the full cost.")
    warmup: float = Field(0.3, ge=0, lt=1, description="Fraction of the search epochs before architecture steps "
                          "(PC-DARTS: 15 of 50).")
    partial_channels: int = Field(4, ge=1, description="PC-DARTS's K: 1/K of each convolution's output channels "
                                  "go through the mixed op during the search (1: all of them; PC-DARTS: 4 on "
                                  "CIFAR). Convolutions whose width K does not divide run whole.")
    edge_normalization: bool = Field(False, description="PC-DARTS: weigh each site of a group (the edges into a "
                                     "node) by softmax(beta) over the group; discretisation ranks them by beta x "
                                     "alpha. Needs sites that declare groups (darts_search).")
    split: float = Field(0.5, gt=0, lt=1, description="Share of the training set (per class) for architecture steps.")
    stages: list[int] = Field([], description="P-DARTS: options each site keeps after each stage, e.g. [5, 3]; "
                              "the search epochs split evenly into len + 1 stages.")
    stage_layers: list[int] = Field([], description="P-DARTS: model_args.layers of the network searched in each "
                                    "stage before the last, e.g. [5, 11] (the last: the recipe's own model), each "
                                    "from fresh weights; empty: the recipe's network in every stage.")
    skip_dropout: float | list[float] = Field(0.0, description="P-DARTS: dropout on the skip option's output, "
                                              "decaying linearly to 0 over the search (0: off); a list: one rate "
                                              "per stage, each decaying over its stage (P-DARTS: 0, 0.4, 0.7).")
    skip_cap: int | None = Field(None, ge=0, description="P-DARTS: at most this many sites choose skip.")
    self_distill: SelfDistillConfig = Field(default_factory=SelfDistillConfig)

    @field_validator("candidates")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str] | None:
        unknown = [n for n in v or [] if n not in candidate_names()]
        if unknown:
            raise ValueError(f"unknown candidate {unknown[0]!r}; registered: {', '.join(candidate_names())}")
        return v

    @model_validator(mode="after")
    def _stages(self) -> "DartsConfig":
        if any(b >= a for a, b in zip(self.stages, self.stages[1:])) or any(k < 1 for k in self.stages):
            raise ValueError(f"stages must shrink and stay at least 1, got {self.stages}")
        rates = self.skip_dropout if isinstance(self.skip_dropout, list) else [self.skip_dropout]
        if any(not 0 <= r < 1 for r in rates):
            raise ValueError(f"skip_dropout: rates must lie in [0, 1), got {self.skip_dropout}")
        if isinstance(self.skip_dropout, list) and len(rates) != len(self.stages) + 1:
            raise ValueError(f"skip_dropout: one rate per stage ({len(self.stages) + 1}), got {self.skip_dropout}")
        if self.stage_layers and len(self.stage_layers) != len(self.stages):
            raise ValueError(f"stage_layers: one depth per stage before the last ({len(self.stages)} as stages "
                             f"says), got {self.stage_layers}")
        if self.stage_layers and self.selection != "darts":
            raise ValueError("stage_layers: only a darts search has stages; set selection: darts")
        if self.selection == "ilp" and not self.distill_steps:
            raise ValueError("selection ilp chooses by the candidates' distillation scores: set distill_steps > 0")
        return self


@register_method
class DartsMethod(BilevelSearch):
    """operation search: candidates distilled from the original, chosen by DARTS or an ILP, then KD"""

    name = "darts"
    config_class = DartsConfig
    config: DartsConfig
    distills_by_default = True

    def __init__(self, config: DartsConfig, space: Space) -> None:
        super().__init__(config, space)
        if KIND not in space:
            raise RecipeError("darts searches the op kind: put op in the recipe's choices (e.g. choices=[op])")
        if not space[KIND].free().any():
            raise RecipeError("darts: no site has a candidate (compress inspect MODEL --set choices=[op] lists them)")
        if config.edge_normalization and not space[KIND].groups():
            raise RecipeError("method.edge_normalization: no op site declares a group (the edges into a node of "
                              "a cell, as in darts_search); set it to false")
        self.partial = self._partial_sites(config.partial_channels)
        self.windows: list[MixedOp] = []
        self.alpha_history: list[list[list[float]]] = []  # per epoch: softmax(alpha), sites x options

    def _partial_sites(self, k: int) -> list[str]:
        """The convolution sites, and the sites declaring ``partial: bypass`` (cell edges), whose
        output channels ``k`` divides (PC-DARTS runs the others whole)."""
        convs = [s for s in self.space[KIND].sites if s.frozen is None and len(s.options) > 1
                 and (s.site.kind == "conv" or s.site.attrs.get("partial") == "bypass")]
        fits = [s.name for s in convs if s.site.attrs["out"] % k == 0]
        if k > 1 and not fits and "partial_channels" in self.config.model_fields_set:
            widths = sorted({s.site.attrs["out"] for s in convs})
            raise RecipeError(f"method.partial_channels={k} divides the output channels of no convolution site "
                              f"(widths {', '.join(map(str, widths[:8]))}{'...' if len(widths) > 8 else ''})")
        return fits if k > 1 else []

    @classmethod
    def space_kinds(cls, choices: list[str]) -> list[str]:
        """The op kind alone: the kinds beside it in ``choices`` prune the searched model after
        (:meth:`then_kinds`)."""
        return [KIND]

    @classmethod
    def then_kinds(cls, choices: list[str]) -> list[str]:
        """``choices: [op, channels]``: channels pruned on the op-searched model (followup.py).
        Without op in ``choices`` (the default recipe's channels and depth are another method's): none."""
        if KIND not in choices:
            return []
        then = [k for k in choices if k != KIND]
        refused = [k for k in then if not followable(k)]
        if refused:
            raise RecipeError(f"choices: {refused[0]} cannot follow the op search (only kinds that weight "
                              "importance ranks can, e.g. channels or kernel)")
        return then

    @classmethod
    def trace_options(cls, config: DartsConfig) -> dict:
        return {"candidates": config.candidates}

    @property
    def trains_in_search(self) -> bool:  # type: ignore[override]
        return self.config.selection == "darts"

    def min_search_epochs(self) -> int:
        """One epoch per stage where the stages grow the network (each is its own training)."""
        if self.config.stage_layers:
            return len(self.config.stages) + 1
        return 1 if self.trains_in_search else 0

    def model_variants(self) -> list[dict]:
        return [{"layers": n} for n in self.config.stage_layers]

    def fixed(self) -> Decision:
        """The cheapest option at every site (what the early budget check tries)."""
        choices = self.space[KIND]
        return Decision({KIND: {s.name: dict(s.options[int(np.argmin([c[0] for c in s.costs]))])
                                for s in choices.sites if s.frozen is None and len(s.options) > 1}})

    # -- the algorithm ---------------------------------------------------------------------------
    def search(self, model: nn.Module, ctx: SearchContext) -> SearchResult:
        self.ctx = ctx
        gates = attach_gates(model, self.space)
        mixed = {name: m for name in self.space[KIND].items() if isinstance(m := gates.model.get_submodule(name), MixedOp)}
        gates.model.to(ctx.trainer.device)
        batches = (x.to(ctx.trainer.device) for x, _ in cycle(ctx.trainer.loader(ctx.train_set, ctx.batch_size,
                                                                                   shuffle=True)))
        scores = distill_candidates(gates.model, mixed, batches, steps=self.config.distill_steps,
                                    lr=self.config.distill_lr, autocast=ctx.trainer.autocast,
                                    progress=ctx.trainer.run.progress) if self.config.distill_steps else {}
        summary = {"candidate_loss": {n: {"best": float(np.min(s[1:])), "worst": float(np.max(s[1:]))}
                                      for n, s in scores.items() if len(s) > 1}}
        decision, history = self._select(gates, ctx, scores)
        summary["chosen"] = {n: label(o) for n, o in decision.get(KIND, {}).items()}
        if self.arch is not None and self.alpha_history:  # the chosen option's probability, epoch by epoch
            chosen = decision.keep(self.space)[KIND]
            summary["alpha_of_chosen"] = {s.name: [round(e[i][int(np.argmax(chosen[s.slots]))], 4)
                                                   for e in self.alpha_history] for i, s in enumerate(self.arch.sites)}
        if self.arch is not None and self.space[KIND].groups():
            summary["edge_strength"] = self._edge_strengths()
        if self.partial and self.arch is not None:
            summary["partial_channels"] = {"K": self.config.partial_channels, "sites": len(self.partial),
                                           "of": len(self.arch.sites)}
        summary["cost"] = decision.cost(self.space, ctx.budget.what) / self.space.cost.full(ctx.budget.what)
        trained = {name: mixed[name].ops[self.space[KIND].site(name).index(o)] for name, o in
                   decision.get(KIND, {}).items()}
        plain = gates.remove()
        if callable(getattr(plain, "genotype", None)):  # a cell search space reads its decision as cells
            summary["genotype"] = dataclasses.asdict(plain.genotype(decision.get(KIND, {})))
        return SearchResult(plain, decision, summary, history, carry=self._carry(plain, decision, trained))

    def _select(self, gates, ctx: SearchContext, scores: dict[str, np.ndarray]) -> tuple[Decision, list[dict]]:
        """The decision by the recipe's selection, and the search's per-epoch rows (darts only)."""
        cfg, budget = self.config, ctx.budget
        if cfg.selection == "darts":
            return self._darts(gates, ctx, scores)
        if cfg.selection == "ilp":
            objective, floor = self._slot_scores(scores), None
        else:  # random: seeded uniform scores, kept inside the band as darts's argmax is (none without a cost loss)
            objective = np.random.default_rng(ctx.seed).random(self.space[KIND].size)
            floor = budget.target - cfg.tolerance if cfg.cost_weight else None
        return choose_options(self.space, KIND, objective, budget.target, what=budget.what, at_least=floor), []

    def _darts(self, gates, ctx: SearchContext, scores: dict[str, np.ndarray]) -> tuple[Decision, list[dict]]:
        weight_set, arch_set = split_dataset(ctx.train_set, self.config.split, seed=ctx.seed)
        growing = bool(self.config.stage_layers)
        kept, rows, earlier = shallower_stages(type(self), self.config, ctx, weight_set, arch_set) if growing \
            else ({}, [], [])
        controlled = self.supernet(gates, ctx, sizes=(len(weight_set), len(arch_set)), scores=scores)
        self.arch.restrict(kept)
        stage = ctx.stage("search", train_set=weight_set, val_set=None, arch_set=arch_set, hooks=self)
        if growing:  # the last stage's share of the epochs, on the run's own network
            last = stage_epochs(ctx.epochs.epochs, len(self.config.stages) + 1)[-1]
            stage = dataclasses.replace(stage, config=ctx.epochs.model_copy(update={"epochs": last}))
        self.alpha_history = []
        history = [h.row() for h in ctx.trainer.fit(controlled, stage)]
        if growing:
            history = rows + [{**h, "stage": len(self.config.stages) + 1} for h in history]
            self.alpha_history = [alpha_by_site(self.arch, e) for e in earlier] + self.alpha_history
        gates.model = controlled.net  # (the gates stay: the caller takes the trained candidates out)
        return self._decide(ctx), history

    def supernet(self, gates, ctx: SearchContext, sizes: tuple[int, int] = (0, 0),
                 scores: dict[str, np.ndarray] | None = None) -> ControlledModel:
        """The searchable network on ``gates`` (mixed ops in place): partial channels on, the
        architecture logits as its controller (started from the distillation ``scores`` per site
        and option, where the recipe says so), their optimizer, and voting-teacher buffers for
        ``sizes`` (weight, arch) samples."""
        cfg = self.config
        self.ctx = ctx
        self.windows = [gates.model.get_submodule(name) for name in self.partial]
        for mixed in self.windows:
            mixed.partial = cfg.partial_channels
        start = {n: -cfg.init_scale * v for n, v in (scores or {}).items()} if cfg.init == "distillation" else None
        self.arch = OpLogits(self.space, start=start, edge_norm=cfg.edge_normalization)
        self.controlled = ControlledModel(gates, self.arch)
        for p in self.arch.parameters():  # alpha (and beta): the weight optimizer never sees them
            p.requires_grad_(False)
        self.arch_opt = ArchitectureStep(list(self.arch.parameters()), lr=cfg.arch_lr, betas=cfg.arch_betas,
                                         weight_decay=cfg.arch_weight_decay, order=cfg.order, dist=ctx.trainer.dist)
        self.make_voting(sizes, ctx.num_classes or 10)
        return self.controlled

    def arch_step(self, held_out, batch) -> None:
        """PC-DARTS's windows move once per search step (warm-up included), then the bilevel step."""
        for mixed in self.windows:
            mixed.advance()
        super().arch_step(held_out, batch)

    def begin_epoch(self, epoch: int, epochs: int) -> dict[str, float]:
        self.epoch, self.epochs = epoch, epochs
        rate = skip_dropout_at(self.config.skip_dropout, epoch, epochs, last_stage=bool(self.config.stage_layers))
        for m in self.controlled.net.modules():
            if isinstance(m, MixedOp):
                m.skip_dropout = rate
        stages = self.config.stages
        if stages and not self.config.stage_layers:  # P-DARTS: drop options at the stage boundaries (epochs split evenly)
            boundary = np.cumsum(stage_epochs(epochs, len(stages) + 1))[:-1].tolist()
            for keep, at in zip(stages, boundary):
                if epoch == at:
                    self.arch.drop(keep)
        return {"skip_dropout": rate} if self.config.skip_dropout else {}

    def arch_active(self) -> bool:
        return self.epoch >= math.floor(self.config.warmup * self.epochs)

    def cost_fractions(self) -> tuple[torch.Tensor, float]:
        what = self.ctx.budget.what
        expected = self.space.cost.fraction(what, {KIND: self.arch.values(self.arch.probabilities()).double()})
        return expected, float(self.space.cost.fraction(what, {KIND: self.arch.argmax().double()}))

    def end_epoch(self, epoch: int, epochs: int) -> dict[str, float]:
        self.alpha_history.append(self.arch.probabilities().detach().cpu().tolist())
        return super().end_epoch(epoch, epochs)

    # -- decisions -------------------------------------------------------------------------------
    def _decide(self, ctx: SearchContext) -> Decision:
        """argmax per site (in a group, its ``keep`` strongest sites by their best option other
        than ``off``; the others ``off``), at most ``skip_cap`` skips, then within the budget."""
        p, strength = self.arch.probabilities().detach(), self.arch.weights().detach()
        choice = strongest_in_groups(strength, self._groups())
        if self.config.skip_cap is not None:
            choice = self._cap_skips(strength, choice, self.config.skip_cap)
        one_hot = F.one_hot(choice, p.shape[1]).to(p.dtype)
        decision = Decision.from_keep(self.space, {KIND: self.arch.values(one_hot).numpy()})
        cost = decision.cost(self.space, ctx.budget.what) / self.space.cost.full(ctx.budget.what)
        target, band = ctx.budget.target, self.config.tolerance
        if cost <= target and (cost >= target - band or not self.config.cost_weight):  # no cost loss: no band
            return decision
        log_p = torch.log(self.arch.values(p).clamp_min(1e-12)).numpy()  # the likeliest choice in the band
        return choose_options(self.space, KIND, log_p, target, at_least=target - band, what=ctx.budget.what)

    def _cap_skips(self, p: torch.Tensor, choice: torch.Tensor, cap: int) -> torch.Tensor:
        """P-DARTS: at most ``cap`` skips, counted once per row of alpha (tied sites choose
        together); the weakest skips over the cap take their best option that is neither a skip
        nor the site's ``off``."""
        sites, rows = self.arch.sites, self.arch.row.tolist()
        skips = {rows[i]: i for i, s in enumerate(sites) if is_skip(s.site, s.options[int(choice[i])])}
        weakest = sorted(skips.values(), key=lambda i: float(p[i, choice[i]]))[:max(0, len(skips) - cap)]
        for i in weakest:
            s = sites[i]
            others = [j for j, o in enumerate(s.options) if not is_skip(s.site, o) and o["op"] != s.site.attrs.get("off")]
            best = max(others, key=lambda j: float(p[i, j]))
            choice[[k for k, r in enumerate(rows) if r == rows[i]]] = best
        return choice

    def _edge_strengths(self) -> dict[str, float]:
        """Per site in a group: its strongest weight other than ``off`` (what the discretisation
        ranks a node's edges by; beta x alpha with edge normalisation)."""
        strength = self.arch.weights().detach().clone()
        out = {}
        for members, _, off in self._groups():
            strength[members, off] = -1.0
            out.update({self.arch.sites[i].name: round(float(strength[i].max()), 6) for i in members})
        return out

    def _groups(self) -> list[tuple[list[int], int, list[int]]]:
        """The op kind's groups with their members as rows of ``self.arch`` (its free sites)."""
        row = {s.name: i for i, s in enumerate(self.arch.sites)}
        sites = self.space[KIND].sites
        return [([row[sites[i].name] for i in m], keep, off) for m, keep, off in self.space[KIND].groups()]

    def _slot_scores(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        out = np.zeros(self.space[KIND].size)
        for s in self.space[KIND].sites:
            if s.name in scores:
                out[s.slots] = -scores[s.name]
        return out

    def _carry(self, plain: nn.Module, decision: Decision, trained: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
        """The decided model's weights: the searched ones, each chosen op its trained module."""
        compressed = slice_model(plain.cpu().eval(), self.space, decision)
        for name, module in trained.items():
            compressed.set_submodule(name, module)
        return {k: v.detach().cpu().clone() for k, v in compressed.state_dict().items()}

    def report(self, summary: dict) -> list[str]:
        return darts_report.section(summary)

    def plots(self, summary: dict, out) -> list[str]:
        return darts_report.plots(summary, out)

    def state_dict(self) -> dict:
        """alpha and the allowed options are in the model's state (the controller is a submodule);
        the partial-channel windows' position is here, so that a resumed search sees the same ones."""
        state = super().state_dict()
        turn = self.windows[0].turn if self.windows else 0
        return {**state, "alpha_history": self.alpha_history, "window_turn": turn} if state else {}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state and self.arch is not None:
            self.alpha_history = list(state.get("alpha_history", []))
            for mixed in self.windows:
                mixed.turn = int(state.get("window_turn", 0))

