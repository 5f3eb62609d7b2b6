"""``grow``: MixtureGrowth (Pham et al., WACV 2024; DESIGN §5.3) on any traced model.

    target  <- the model cut to the budget (the same share of every channel group), or the model
    seeds   <- the target at half the width of every prunable group, conv/linear weights as
               template mixtures (own template set per seed, coefficients: rows 0 and 1 of an
               orthogonal [4, K] init per layer)
    train seed A; train seed B (fusion; skipped without)
    grow ×2: the seeds on the diagonal blocks, the off-diagonal blocks new coefficients over the
             trained templates (rows 2, 3: orthogonal | random | copy), norms concatenated,
             the classifier the sum of both heads
    fine-tune the grown model (the pipeline's fine-tune stage, at the search stage's learning rate
             unless grown_lr says finetune)

No original is trained; the search stage's epochs train the seeds.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from typing import Literal

from pydantic import Field, model_validator

from ..budget import BudgetError, decide
from ..decision import Decision
from ..errors import distinct_figures, figure_at_least
from ..frontend import trace
from ..recipe import MethodConfig, TrainConfig
from ..space import Space
from ..space.kinds import get_kind
from ..surgery.slice import slice_model
from ..surgery.widen import Halves, grow_model, growth_gap, seed_model, shared_groups, split_halves
from .base import Method, SearchContext, SearchResult, register_method
from .mixtures import attach_templates, growth_fill, materialize_templates, mixable_weights, orthogonal_rows


class GrowConfig(MethodConfig):
    """MixtureGrowth (Pham et al., WACV 2024; DESIGN 5.3): two seed models of half the target's width,
    whose conv and linear weights are mixtures of templates, train one after the other in the search
    stage; then they are grown x2 into the target, which trains in the fine-tune stage.  No
    original is trained: the base stage is skipped."""

    name: Literal["grow"] = "grow"
    target: Literal["budget", "model"] = Field(
        "budget", description="What the seeds grow into: the model cut to the budget (the same share of every "
        "channel group), or the model itself (the budget is then ignored).")
    templates: int = Field(2, ge=2, description="Templates per set; each seed layer mixes its own set.")
    fusion: bool = Field(True, description="Train a second seed and grow from both; without, the new blocks "
                         "come from the first seed's templates alone.")
    second_seed: float = Field(0.5, gt=0, lt=1, description="Share of the search epochs that trains the second "
                               "seed (with fusion); the first seed trains the rest.")
    new_coefficients: Literal["orthogonal", "random", "copy", "zero"] = Field(
        "zero", description="Coefficients of the new (off-diagonal) blocks over the trained templates. zero keeps "
        "the grown model the sum of its seeds and won the ablation on resnet18 and mobilenet_v2 (docs/grow.md); "
        "orthogonal is the paper's.")
    noise: float = Field(1.0, ge=0, description="Scale of the random and copy coefficient inits.")
    grown_lr: Literal["search", "finetune"] = Field(
        "search", description="Learning rate of the grown model in the fine-tune stage: the search stage's, as "
        "its seeds trained (won on resnet18 and mobilenet_v2 at the default recipe's epochs, docs/grow.md), or "
        "the fine-tune stage's (the reference code's low rate after converged seeds).")
    scratch_baseline: bool = Field(True, description="Also train the target from scratch for the same total "
                                   "epochs (search + fine-tune, search stage settings) and report both side by side "
                                   "(what growth saved; about doubles the run: false skips it).")
    equal_time_baselines: bool = Field(False, description="With scratch_baseline: also train the target from scratch "
                                       "and the first seed alone (no growth) for as many epochs as fit in the grow "
                                       "path's wall-clock, each at its per-epoch seconds measured in this run.")

    @model_validator(mode="after")
    def _equal_time_needs_scratch(self):
        if self.equal_time_baselines and not self.scratch_baseline:
            raise ValueError("equal_time_baselines needs scratch_baseline: the target's epoch time is measured there")
        return self



@register_method
class GrowMethod(Method):
    """MixtureGrowth: two half-width seeds of template mixtures grown x2 into the budget's shape"""

    name = "grow"
    config_class = GrowConfig
    config: GrowConfig

    def __init__(self, config: GrowConfig, space: Space) -> None:
        super().__init__(config, space)
        split_halves(space)  # a model with nothing to grow fails before any training

    @property
    def trains_original(self) -> bool:
        return False

    def min_search_epochs(self) -> int:
        return 2 if self.config.fusion else 1  # one epoch per seed at least

    def search(self, model: nn.Module, ctx: SearchContext) -> SearchResult:
        cfg, epochs_cfg, checkpoint, resume = self.config, ctx.epochs, ctx.checkpoint, ctx.resume
        cut = self._target_decision(ctx)
        example = torch.randn(*self.space.input_shapes[0])
        target, tspace, halves = grow_target(model, self.space, cut, example)
        gen = torch.Generator().manual_seed(ctx.seed)
        names = [n for n, _ in mixable_weights(target)]  # a seed is the target sliced: the same layers
        rows = {n: orthogonal_rows(4, cfg.templates, gen) for n in names}
        epochs = _seed_epochs(epochs_cfg.epochs, cfg)
        history, evals, seeds = [], {}, []
        for i in range(2 if cfg.fusion else 1):
            coefficients = {n: r[i] for n, r in rows.items()}
            seed = mixture_seed(target, tspace, halves, coefficients, init=ctx.seed * 2 + i,
                                templates=cfg.templates, generator=gen)
            seeds.append(seed)
            stage = "seed_" + "ab"[i]
            rows_ = [dict(h.row(), stage=stage) for h in ctx.trainer.fit(seed, ctx.stage(
                stage, config=epochs_cfg.model_copy(update={"epochs": epochs[i]})))]
            history += rows_
            seed.cpu().eval()
            if rows_ and rows_[-1].get("val_acc") is not None:  # the trainer's own last validation
                evals[stage] = rows_[-1]["val_acc"]
        fill = growth_fill(seeds[0], seeds[1] if cfg.fusion else None, rows, cfg.new_coefficients,
                           noise=cfg.noise, generator=gen)
        plain = [materialize_templates(copy.deepcopy(s)) for s in seeds]
        grown = grow_model(target, tspace, halves, plain[0], plain[1] if cfg.fusion else None, fill=fill)
        decision = _compose(self.space, cut, halves.grown_decision(tspace))
        full = float(tspace.cost.flops())
        seed_a_seconds = [h["seconds"] for h in history if h["stage"] == "seed_a"]
        scratch = _Scratch(target, tspace, halves, rows, epochs_cfg, epochs, checkpoint, resume,
                                 float(halves.seed_decision(tspace).flops(tspace)) / full,
                                 float(np.median(seed_a_seconds)) if seed_a_seconds else 0.0)
        summary = {
            "target": cfg.target, "fusion": cfg.fusion, "new_coefficients": cfg.new_coefficients,
            "grown_lr": cfg.grown_lr,
            "seed_epochs": epochs, "templates": cfg.templates, "mixture_weights": len(names),
            "coefficients": sum(p.numel() for n, p in seeds[0].named_parameters() if n.endswith("coefficients")),
            "seed_params": sum(p.numel() for p in plain[0].parameters()),
            "grown_params": sum(p.numel() for p in grown.parameters()),
            "target_units": {g: len(k) for g, k in cut.get("channels", {}).items()},
            "seed_units": {g: len(k) for g, k in halves.a.items()},
            "dropped_units": halves.dropped,
            "shared_groups": shared_groups(tspace, halves),
        }
        if ctx.val_set is not None:
            summary["val_top1"] = {**evals, "grown": ctx.trainer.evaluate(copy.deepcopy(grown), ctx.val_set,
                                                                         ctx.batch_size).top1}
        if cfg.fusion:  # how close the grown model is to the sum of its seeds (0 where growth is exact)
            summary["growth_gap"] = growth_gap(target, tspace, halves, plain[0], plain[1], example.repeat(2, 1, 1, 1))
        baseline = (lambda test_set, finetune_epochs, seconds: self.baseline(ctx, scratch, test_set, finetune_epochs,
                                                                            seconds)) \
            if cfg.scratch_baseline else None
        # the sliced model has the grown model's architecture (the same cut): it carries its weights
        return SearchResult(model, decision, summary, history, carry=grown.state_dict(), baseline=baseline)

    def finetune_config(self, finetune: TrainConfig, search: TrainConfig) -> TrainConfig:
        """The grown model trains at the search stage's learning rate (``grown_lr: search``), as its
        seeds did, or at the fine-tune stage's (``finetune``)."""
        return finetune.model_copy(update={"lr": search.lr}) if self.config.grown_lr == "search" else finetune

    def baseline(self, ctx: SearchContext, s: "_Scratch", test_set, finetune_epochs: int,
                 method_seconds: float) -> dict:
        """With ``scratch_baseline``: the target re-initialised and trained for the grow path's
        total epochs, with the counted training FLOPs of both paths (forward MACs per sample x
        epochs; the seeds cost their share of the target's).  With ``equal_time_baselines`` also
        the target and the first seed alone, each for as many epochs as fit in ``method_seconds``
        at its own per-epoch seconds of this run (not checkpointed: a resumed run retrains them)."""
        total = sum(s.seed_epochs) + finetune_epochs
        ck = s.checkpoint.with_name("scratch.pt") if s.checkpoint is not None else None
        scratch = self._train_fresh(ctx, s, test_set, copy.deepcopy(s.target), total, "scratch", ck, s.resume)
        grow_flops = sum(s.seed_epochs) * s.seed_share + finetune_epochs
        out = {"name": "target from scratch", **scratch,
               "training_flops_ratio": round(grow_flops / total, 3), "seed_flops_share": round(s.seed_share, 4)}
        if self.config.equal_time_baselines:
            target_epoch = scratch["seconds"] / total
            seed = mixture_seed(s.target, s.tspace, s.halves, {n: r[0] for n, r in s.rows.items()},
                                init=ctx.seed * 2, templates=self.config.templates,  # seed A's initialisation
                                generator=torch.Generator().manual_seed(ctx.seed))
            out["equal_wall_clock"] = {
                "target from scratch": self._train_fresh(ctx, s, test_set, copy.deepcopy(s.target),
                                                         _fit(method_seconds, target_epoch),
                                                         "scratch_equal_time"),
                "seed alone": self._train_fresh(ctx, s, test_set, seed, _fit(method_seconds, s.seed_epoch_seconds),
                                                "seed_alone", reinitialise=False)}
        return out

    def _train_fresh(self, ctx: SearchContext, s: "_Scratch", test_set, net: nn.Module, epochs: int, stage: str,
                     checkpoint: Path | None = None, resume: bool = False, reinitialise: bool = True) -> dict:
        """``net`` (re-initialised unless told) trained ``epochs`` with the search stage's settings
        as ``stage`` (its log and progress label): its epochs, seconds and test top-1."""
        if reinitialise:
            _reinitialise(net, ctx.seed * 2 + 7)
        t0 = time.perf_counter()
        ctx.trainer.fit(net, ctx.stage(stage, config=s.epochs_cfg.model_copy(update={"epochs": epochs}),
                                       checkpoint=checkpoint, resume=resume, criterion=None))
        seconds = time.perf_counter() - t0
        return {"epochs": epochs, "seconds": round(seconds, 1),
                "test_top1": ctx.trainer.evaluate(net, test_set, ctx.batch_size).top1}

    def _target_decision(self, ctx: SearchContext) -> Decision:
        if self.config.target == "model":
            return Decision()
        return uniform_decision(self.space, ctx.budget.target, ctx.budget.what)


def grow_target(model: nn.Module, space: Space, cut: Decision,
                example: torch.Tensor) -> tuple[nn.Module, Space, Halves]:
    """The target (``model`` cut by ``cut``), its space traced on ``example`` and the halves its
    seeds take."""
    target = slice_model(model.cpu().eval(), space, cut)
    tspace = trace(target, example)
    return target, tspace, split_halves(tspace)


def mixture_seed(target: nn.Module, tspace: Space, halves: Halves,
                 coefficients: dict[str, torch.Tensor] | None, *, init: int, templates: int = 2,
                 generator: torch.Generator | None = None) -> nn.Module:
    """A seed of ``target`` (half of every prunable group), freshly initialised with seed ``init``,
    its conv and linear weights template mixtures starting from ``coefficients``."""
    seed = seed_model(target, tspace, halves)
    _reinitialise(seed, init)
    attach_templates(seed, coefficients, num_templates=templates, generator=generator)
    return seed


def uniform_decision(space: Space, target: float, what: str = "flops") -> Decision:
    """The largest decision keeping the same share of every prunable group (its first units, an even
    count, at least 2) within ``target`` of the full cost: a shape without a trained model to rank.
    Scores that fall with a unit's position in its group make the budget fit keep equal shares."""
    choices = space["channels"]
    scores = np.zeros(choices.size)
    for g in choices.groups:
        scores[g.units] = 1 - np.arange(g.size) / g.size

    splittable = [g for g in choices.groups if g.prunable and (~g.pinned).sum() >= 2]

    def even(keep: dict[str, np.ndarray]) -> None:
        """Every group at the largest share any group kept, an even count of its free units."""
        share = max((keep["channels"][g.units][~g.pinned].mean() for g in splittable), default=1.0)
        for g in splittable:
            free = np.flatnonzero(~g.pinned)
            n = min(len(free) - len(free) % 2, max(2, 2 * math.ceil(share * len(free) / 2)))
            keep["channels"][g.offset + free] = np.arange(len(free)) < n

    try:
        return decide(space, {"channels": scores}, target, what=what, settle=even, fill=False)
    except BudgetError:
        keep = {"channels": np.zeros(choices.size, dtype=bool)}
        get_kind("channels").settle(choices, keep["channels"], scores, None)
        even(keep)
        smallest = float(space.cost.fraction(what, {"channels": torch.from_numpy(keep["channels"].astype(float))}))
        want, floor = distinct_figures(target, smallest)
        raise BudgetError(f"budget {want} of the {what} cannot be met with two units per channel group "
                          f"(that keeps {floor}): ask for at least {figure_at_least(smallest, floor)}") from None


def _compose(space: Space, first: Decision, second: Decision) -> Decision:
    """``second`` (a decision over the space of the model ``first`` cut out) as one decision over
    ``space``: group names survive slicing, unit ``i`` of the cut group is ``first``'s ``i``-th kept."""
    groups = {}
    a, b = first.get("channels", {}), second.get("channels", {})
    for g in space["channels"].groups:
        kept = a.get(g.name, list(range(g.size)))
        if g.name in b:
            kept = [kept[i] for i in b[g.name]]
        if len(kept) != g.size:
            groups[g.name] = sorted(kept)
    return Decision({**first, "channels": groups})


class _Scratch(NamedTuple):
    """What the baselines need from the search: the target, its halves and the seeds' schedule."""

    target: nn.Module
    tspace: Space
    halves: Halves
    rows: dict[str, torch.Tensor]
    epochs_cfg: TrainConfig
    seed_epochs: list[int]
    checkpoint: Path | None
    resume: bool
    seed_share: float
    seed_epoch_seconds: float


def _fit(seconds: float, epoch_seconds: float) -> int:
    """How many whole epochs of ``epoch_seconds`` come closest to ``seconds`` (at least one)."""
    return max(1, round(seconds / max(epoch_seconds, 1e-9)))


def _seed_epochs(total: int, cfg: GrowConfig) -> list[int]:
    if not cfg.fusion:
        return [total]
    b = min(total - 1, max(1, round(total * cfg.second_seed)))
    return [total - b, b]


def _reinitialise(model: nn.Module, seed: int) -> None:
    """A fresh initialisation of every layer that has one (a seed trains from scratch)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.modules():
            if hasattr(m, "reset_parameters") and m is not model:
                m.reset_parameters()
