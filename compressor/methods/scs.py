"""``scs``: structured continuous sparsification (Yuan, Savarese & Maire, ICLR 2021; DESIGN 5.1).

Algorithm, per epoch e of T (a *gate* is one channel unit or one residual block):

    q  ~ Bernoulli(sigma(beta * s))                 drawn once, held for the epoch
    du = (1 - budget) - u(q)                        u = fraction of FLOPs/params removed by q
    lambda1, lambda2 = lambda1_base * du, lambda2_base * du
    for each batch:  g = sigma(beta * s) * q        channel gates; blocks compute x + g * f(x)
                     L = CE + lambda1 * sum sigma(beta * s_c) + lambda2 * sum sigma(beta * s_l)
                     SGD step on weights and on s
    t_s += q                                        per-gate counters: beta = beta0 * gamma^t_s
                                                    (the ``global`` ablation: t_s = e)
    end: keep the gates with the largest s that fit the budget (= s > 0 once du has settled).

Short runs (a few epochs instead of the paper's 160) can set ``lambda_interval``: du is then also
re-measured every that many steps on the *expected* cost of the next draw, cost(sigma(beta' * s))
(for independent Bernoulli gates the expected FLOPs of a sampled architecture is the cost model
at the keep probabilities), with beta' the temperatures that draw will use: this epoch's counters
plus q.  Measured on q alone, du cannot change within an epoch, and every logit, pushed by the
same penalty, crossed zero in the first epoch (docs/compress.md); measured at the current
temperatures, the cost held at the budget within each epoch and every draw overshot it, since
beta grows by gamma between epochs (docs/accuracy.md, grow mode).  With that controller grow mode
reaches the budget in its first epoch; ``grow_epochs`` k (ours) paces it: during epoch e the
penalty aims the next draw at budget * min(1, (e + 1) / k), so the first k epochs train a smaller
network (the paper's 160 epochs grow gradually by themselves).

Choices the paper leaves open, recorded here: q is drawn at the start of each epoch from a
generator seeded by (seed, epoch), so every DDP process and every resumed run draws the same
masks; u(q) is measured with the cost model on the sampled architecture; in grow mode a unit
switched on for the first time gets fresh random weights (normal with its tensor's initial std).
The paper starts every logit at the same value; ``init: importance`` (ours, prune mode) starts
them from the ``prune`` baseline's decision instead (:func:`importance_prior`), so the search
refines a good architecture rather than deriving one from logits that fall in lockstep.
"""
from __future__ import annotations

import copy
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn.utils import parametrize

from ..budget import decide
from ..decision import Decision
from ..gates import ControlledModel, PartController, attach_gates
from ..recipe import MethodConfig
from ..space import Space
from ..surgery.subnet import sub_network
from ..train.part import EpochNetwork
from .base import Method, SearchContext, SearchResult, register_method
from .scs_logits import LAYERS, ScsLogits, importance_prior


class ScsConfig(MethodConfig):
    """Structured continuous sparsification (Yuan, Savarese & Maire, ICLR 2021; DESIGN 5.1)."""

    name: Literal["scs"] = "scs"
    mode: Literal["prune", "grow"] = Field("prune", description="Start with every gate on, or one per layer/stage.")
    channels: bool = Field(True, description="Gate channel groups (other weight-ranked kinds, such as kernel rings, are gated like units whenever the recipe's choices hold them).")
    layers: bool = Field(True, description="Gate residual blocks (depth).")
    lambda1_base: float | None = Field(None, description="Channel penalty base; None = 1.0 with layers, else 0.5.")
    lambda2_base: float = Field(0.1, description="Layer penalty base.")
    beta0: float = Field(1.0, gt=0, description="Initial temperature.")
    beta_final: float = Field(100.0, gt=1, description="Temperature after T on-epochs: gamma = (final/beta0)^(1/T).")
    temperature: Literal["per_gate", "global"] = Field("per_gate", description="Per-gate counters or t = epoch.")
    lambda_interval: int | None = Field(None, ge=1, description="Also re-measure du every N steps on the expected "
                                        "cost of the next draw; None = once per epoch (the paper).")
    init_logit: float | None = Field(None, gt=0, description="|s| at the start (prune: +s for all; grow: +s for "
                                     "seeds; importance: the size farthest from the cut). None = 3.0 (the paper's), "
                                     "100.0 with init: importance (only the units next to the cut start undecided).")
    init: Literal["constant", "importance"] = Field(
        "constant", description="Channel logits at the start. constant: +init_logit for every unit (the paper). "
        "importance (prune mode): the magnitude-pruning decision at the budget sets the sign, the unit's rank "
        "inside the kept or the dropped units the size, from 0 at the cut to init_logit.")
    logit_lr: float = Field(0.1, gt=0, description="SGD learning rate of the gate logits.")
    logit_momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum of the gate logits.")
    logit_weight_decay: float = Field(1e-6, ge=0, description="Weight decay of the gate logits.")
    sparse_epochs: bool = Field(False, description="Train only the units the epoch's draw switched on (the "
                                "sliced active network, weights written back after the epoch): a sparse "
                                "epoch costs less wall-clock. Off: the whole network runs with zeros in it.")
    grow_epochs: int | None = Field(None, ge=1, description="Grow mode (ours): the cost the penalty aims the "
                                    "next draw at rises linearly to the budget over this many search epochs "
                                    "(at most the search's), so the first epochs train a small network. "
                                    "None = the budget from the first epoch (the paper).")

    @model_validator(mode="after")
    def _init_needs_weights(self) -> ScsConfig:
        if self.init == "importance" and self.mode == "grow":
            raise ValueError("init: importance ranks a trained original's units; grow mode starts from fresh "
                             "weights: set method.init=constant (the scs-grow recipe does)")
        if self.grow_epochs is not None and self.mode != "grow":
            raise ValueError("grow_epochs paces the growth of grow mode; prune mode starts at full size: "
                             "set method.mode=grow or drop method.grow_epochs")
        return self

    @property
    def lambda1(self) -> float:
        if self.lambda1_base is not None:
            return self.lambda1_base
        return 1.0 if self.layers else 0.5

    @property
    def start_logit(self) -> float:
        """``init_logit`` or its default for ``init`` (docs/accuracy.md: the band near the cut)."""
        if self.init_logit is not None:
            return self.init_logit
        return 100.0 if self.init == "importance" else 3.0



@register_method
class ScsMethod(Method):
    """structured continuous sparsification: gates and weights trained together under a budget-aware penalty"""

    name = "scs"
    config_class = ScsConfig
    config: ScsConfig
    metrics = ("sampled_cost", "sign_cost")

    def __init__(self, config: ScsConfig, space: Space) -> None:
        super().__init__(config, space)
        self.logits: ScsLogits | None = None
        self.lambda1 = self.lambda2 = self.kept = 0.0
        self.seed, self.budget = 0, None
        self.net: nn.Module | None = None
        self.init_std: dict[str, float] = {}
        self.steps = self.epoch = self.epochs = 0
        self.plain: nn.Module | None = None  # gate-free copy of the network (sparse epochs)

    @property
    def trains_original(self) -> bool:
        """Grow mode starts from one unit per group and fresh weights: no trained original."""
        return self.config.mode != "grow"

    # -- the algorithm ---------------------------------------------------------------------------
    def begin_epoch(self, epoch: int, epochs: int) -> dict[str, float]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        drawn = self.logits.draw(g)
        self.epoch, self.epochs = epoch, epochs
        if self.config.mode == "grow" and "channels" in drawn:
            units = self.logits["channels"]
            self._fresh_init(drawn["channels"].bool() & ~units.ever_on.cpu(), g)
            units.ever_on |= units.q.bool()
        kept = self._set_lambda(drawn)
        self.steps = 0
        return {"sampled_cost": kept, "lambda1": self.lambda1}

    def target(self, epoch: int) -> float:
        """The kept cost the draw of ``epoch`` should have: the budget, or with ``grow_epochs`` k
        its share min(1, epoch / k), k at most the search's epochs (a short smoke run still
        reaches the budget)."""
        k = self.config.grow_epochs
        if k is None:
            return self.budget.target
        if self.epochs:  # known once the search has begun
            k = min(k, self.epochs)
        return self.budget.target * min(1.0, epoch / k)

    def _set_lambda(self, values: dict[str, torch.Tensor]) -> float:
        """du for the rest of the epoch: the cost of ``values`` (this draw, or the next one's keep
        probabilities) against the target of the next draw."""
        self.kept = float(self.space.cost.fraction(self.budget.what, self.logits.keep(values)))
        du = (1 - self.target(self.epoch + 1)) - (1 - self.kept)
        self.lambda1, self.lambda2 = self.config.lambda1 * du, self.config.lambda2_base * du
        return self.kept

    def extra_loss(self, model, outputs, targets, indices) -> torch.Tensor:  # noqa: ARG002
        interval = self.config.lambda_interval
        if interval and self.steps and self.steps % interval == 0:
            self._set_lambda({k: v.detach() for k, v in self.logits.soft(ahead=True).items()})
        self.steps += 1
        return self.logits.penalty(self.lambda1, self.lambda2)

    def end_epoch(self, epoch: int, epochs: int) -> dict[str, float]:  # noqa: ARG002
        self.logits.count_epoch(epoch, per_gate=self.config.temperature == "per_gate")
        signs = {k: (g.s.detach() > 0).double() for k, g in self.logits.gates.items()}
        return {"sign_cost": float(self.space.cost.fraction(self.budget.what, self.logits.keep(signs)))}

    def step_metrics(self) -> dict[str, float]:
        return {"cost": self.kept, "lam": self.lambda1}

    def decision(self, ctx: SearchContext) -> tuple[Decision, dict]:
        """Blocks with s <= 0 go; unit gates are ranked by s and the best that fit the budget stay."""
        scores = {k: self.logits[k].full(self.logits[k].s.detach().double().cpu(), 0.0).numpy()
                  for k in self.logits.unit_kinds}
        removed = []
        if LAYERS in self.logits.gates:
            blocks = self.space[LAYERS].blocks
            removed = [b.name for b, s in zip(blocks, self.logits[LAYERS].s.detach().cpu().tolist()) if s <= 0]
        decision = decide(self.space, scores, ctx.budget.target, what=ctx.budget.what, round_to=ctx.round_to,
                          fixed=Decision({LAYERS: removed}))
        keep = decision.keep(self.space)
        free = {k: self.logits[k].free.cpu().numpy() for k in scores}
        kept = np.concatenate([keep[k][free[k]] > 0.5 for k in scores] or [np.zeros(0, bool)])
        sign = np.concatenate([scores[k][free[k]] > 0 for k in scores] or [np.zeros(0, bool)])
        return decision, {"units_positive": int(sign.sum()), "units_kept": int(kept.sum()),
                          "units_free": int(len(sign)), "units_differing_from_sign": int((kept != sign).sum()),
                          "blocks_removed": removed}

    # -- plumbing --------------------------------------------------------------------------------
    def fixed(self) -> Decision:
        return Decision({LAYERS: self.space[LAYERS].items()}) if self.config.layers and LAYERS in self.space \
            else Decision()

    def search(self, model: nn.Module, ctx: SearchContext) -> SearchResult:
        self.seed, self.budget = ctx.seed, ctx.budget
        self.init_std = {n: float(p.detach().float().std()) for n, p in model.named_parameters() if p.dim() > 1}
        self.plain = copy.deepcopy(model).cpu() if self.config.sparse_epochs else None
        prior = None
        if self.config.init == "importance":
            prior = importance_prior(model, self.space, ctx.budget.target, what=ctx.budget.what, round_to=ctx.round_to)
        gates = attach_gates(model, self.space)
        self.logits = ScsLogits(self.space, self.config, ctx.epochs.epochs, prior)
        controlled = ControlledModel(gates, self.logits)
        self.net = controlled.net
        history = ctx.trainer.fit(controlled, ctx.stage("search", hooks=self))
        decision, summary = self.decision(ctx)
        drawn = [h.extra["sampled_cost"] for h in history if "sampled_cost" in h.extra]
        # what a search epoch computed, as a share of the whole network's cost (budget units)
        summary["epoch_cost"] = [round(c, 4) for c in drawn] if self.config.sparse_epochs else [1.0] * len(drawn)
        return SearchResult(controlled.release(), decision, summary, [h.row() for h in history])

    def param_groups(self) -> list[dict]:
        c = self.config
        params = [p for p in self.logits.parameters() if isinstance(p, nn.Parameter)]
        return [{"params": params, "lr": c.logit_lr, "momentum": c.logit_momentum,
                 "weight_decay": c.logit_weight_decay}]

    def epoch_network(self, model: nn.Module) -> EpochNetwork | None:  # noqa: ARG002
        """Sparse epochs: the network sliced to the units this epoch's draw switched on (a group
        whose draw is all off keeps its best unit, at gate value 0) and without the branches of the
        blocks it switched off, gated like the whole one."""
        if self.plain is None:
            return None
        keep = self._drawn_units()
        cut = np.flatnonzero(self.logits[LAYERS].q.cpu().numpy() == 0).tolist() if LAYERS in self.logits.gates else []
        if keep.all() and not cut:
            return None
        raw = {name: raw_tensor(self.net, name) for name, _ in _tensors(self.plain)}
        with torch.no_grad():
            for name, t in _tensors(self.plain):
                t.copy_(raw[name])
        sub = sub_network(self.plain, self.space, keep)
        gates = attach_gates(sub.module, sub.space, cut=cut)
        part = ControlledModel(gates, PartController(self.logits, torch.from_numpy(sub.old_units)))
        # a cut branch's tensors are not in the part: they stay as they are for the epoch
        part_raw = {name: t for name in raw if (t := raw_tensor(part.net, name, missing_ok=True)) is not None}
        pairs = [(raw[n], part_raw[n], lambda t, n=n: sub.gather(n, t), lambda w, p, n=n: sub.scatter(n, w, p))
                 for n, p in self.plain.named_parameters() if p.requires_grad and n in part_raw]
        pairs += [(p, p, lambda t: t, lambda w, p_: w.copy_(p_)) for p in self.logits.parameters()]

        def finish() -> None:
            for name, part_tensor in part_raw.items():
                sub.scatter(name, raw[name], part_tensor)
            part.release()
        return EpochNetwork(part, pairs, finish)

    def _drawn_units(self) -> np.ndarray:
        """The channel units this epoch's draw switched on; a group with none keeps its best."""
        choices = self.space["channels"]
        keep = np.ones(choices.size, dtype=bool)
        if "channels" not in self.logits.gates:
            return keep
        units = self.logits["channels"]
        free = units.free.cpu().numpy()
        keep[free] = units.q.cpu().numpy() > 0
        scores = units.s.detach().cpu().numpy()
        group_of = choices.unit_group()
        for gi, g in enumerate(choices.groups):
            if not keep[g.units].any():
                mine = np.flatnonzero(group_of[free] == gi)
                keep[free[mine[np.argmax(scores[mine])]]] = True
        return keep

    @torch.no_grad()
    def _fresh_init(self, newly_on: torch.Tensor, g: torch.Generator) -> None:
        """Grow mode: weights of channel units switched on for the first time are drawn anew."""
        if not newly_on.any():
            return
        choices = self.space["channels"]
        flat = torch.zeros(choices.size + 1, dtype=torch.bool)
        flat[self.logits["channels"].free.cpu()[newly_on]] = True
        for name, ps in choices.param_slices.items():
            if name not in self.init_std:
                continue
            tensor = raw_tensor(self.net, name)
            for d, units in ps.dims.items():
                hit = flat[torch.from_numpy(np.where(units >= 0, units, choices.size))]
                if hit.any():
                    idx = hit.nonzero().flatten().to(tensor.device)
                    shape = list(tensor.shape)
                    shape[d] = len(idx)
                    fresh = torch.randn(shape, generator=g) * self.init_std[name]
                    tensor.index_copy_(d, idx, fresh.to(tensor.dtype).to(tensor.device))


def _tensors(model: nn.Module):
    """Every parameter and floating buffer of a plain model, by name."""
    yield from model.named_parameters()
    yield from ((n, b) for n, b in model.named_buffers() if b.is_floating_point())


def raw_tensor(net: nn.Module, name: str, missing_ok: bool = False) -> torch.Tensor | None:
    """The stored tensor behind ``name``, under a parametrization if there is one (None for a
    module ``net`` does not hold, if ``missing_ok``)."""
    mod_name, _, attr = name.rpartition(".")
    try:
        module = net.get_submodule(mod_name)
    except AttributeError:
        if missing_ok:
            return None
        raise
    if parametrize.is_parametrized(module, attr):
        return module.parametrizations[attr].original
    return getattr(module, attr)
