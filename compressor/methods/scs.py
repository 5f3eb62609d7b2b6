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
import math

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..budget import fit_to_budget, normalise_by_group
from ..decision import Decision
from ..export.subnet import sub_network
from ..gates import ControlledModel, GateController, PartController, attach_gates
from ..importance import get_importance
from ..recipe import ScsConfig
from ..space import Space
from ..train.part import EpochNetwork
from .base import Method, SearchContext, register_method


class ScsLogits(GateController):
    """Gate logits ``s``, per-gate temperature counters ``t`` and the epoch's draw ``q``."""

    def __init__(self, space: Space, cfg: ScsConfig, epochs: int, prior: np.ndarray | None = None) -> None:
        """``prior``: one value in [-1, 1] per free unit, scaling ``start_logit`` (``init: importance``)."""
        super().__init__()
        self.num_units, self.num_blocks = space.num_units, len(space.blocks)
        free = np.flatnonzero(space.prunable_mask()) if cfg.channels else np.zeros(0, dtype=np.int64)
        nb = self.num_blocks if cfg.layers else 0
        self.register_buffer("free", torch.from_numpy(free).long())
        sign_c, sign_l = torch.ones(len(free)), torch.ones(nb)
        if prior is not None and len(free):
            sign_c = torch.as_tensor(prior, dtype=torch.float32).clone()
        if cfg.mode == "grow":  # one active unit per group and one active block per stage
            sign_c.fill_(-1)
            first: dict[int, int] = {}
            group_of = space.unit_group()
            for pos, u in enumerate(free.tolist()):
                first.setdefault(int(group_of[u]), pos)
            sign_c[list(first.values())] = 1
            sign_l.fill_(-1)
            if nb:
                seeds = {}
                for i, b in enumerate(space.blocks):
                    seeds.setdefault(b.stage, i)
                sign_l[list(seeds.values())] = 1
        for name, init in (("s_c", cfg.start_logit * sign_c), ("s_l", cfg.start_logit * sign_l)):
            if init.numel():
                setattr(self, name, nn.Parameter(init))
            else:  # nothing to learn: an empty buffer keeps DDP free of unused parameters
                self.register_buffer(name, init)
        self.register_buffer("q_c", torch.ones(len(free)))
        self.register_buffer("q_l", torch.ones(nb))
        self.register_buffer("t_c", torch.zeros(len(free)))
        self.register_buffer("t_l", torch.zeros(nb))
        self.register_buffer("ever_on", sign_c > 0)
        self.beta0 = cfg.beta0
        self.per_gate = cfg.temperature == "per_gate"
        self.log_gamma = math.log(cfg.beta_final / cfg.beta0) / max(epochs, 1)

    def soft(self, ahead: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """sigma(beta * s) for channel and block gates; ``ahead``: at the temperatures the next
        epoch's draw will use (the counters after this epoch's increment)."""
        t_c, t_l = self.t_c, self.t_l
        if ahead:
            t_c, t_l = (t_c + self.q_c, t_l + self.q_l) if self.per_gate else (t_c + 1, t_l + 1)
        beta_c = self.beta0 * torch.exp(self.log_gamma * t_c)
        beta_l = self.beta0 * torch.exp(self.log_gamma * t_l)
        return torch.sigmoid(beta_c * self.s_c), torch.sigmoid(beta_l * self.s_l)

    def forward(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        soft_c, soft_l = self.soft()
        units = self.s_c.new_ones(self.num_units).index_put((self.free,), soft_c * self.q_c)
        blocks = soft_l * self.q_l if len(self.q_l) else None
        return units, blocks

    def keep(self, q_c: torch.Tensor, q_l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """0/1 keep vectors over the whole space for channel and block gate values."""
        units = torch.ones(self.num_units, dtype=torch.double)
        units[self.free.cpu()] = q_c.double().cpu()
        blocks = torch.ones(self.num_blocks, dtype=torch.double)
        if len(q_l):
            blocks = q_l.double().cpu()
        return units, blocks


@register_method("scs")
class ScsMethod(Method):
    """Trains gates and weights jointly under the budget-aware penalty, then decides."""

    config: ScsConfig

    def __init__(self, config: ScsConfig, space: Space) -> None:
        super().__init__(config, space)
        self.logits: ScsLogits | None = None
        self.lambda1 = self.lambda2 = 0.0
        self.seed = 0
        self.budget = None
        self.net: nn.Module | None = None
        self.init_std: dict[str, float] = {}
        self.steps = 0
        self.epoch = self.epochs = 0
        self.plain: nn.Module | None = None  # gate-free copy of the network (sparse epochs)

    @property
    def trains_original(self) -> bool:  # type: ignore[override]
        """Grow mode starts from one unit per group and fresh weights: no trained original."""
        return self.config.mode != "grow"

    # -- the algorithm ---------------------------------------------------------------------------
    def begin_epoch(self, epoch: int, epochs: int) -> dict[str, float]:
        lg = self.logits
        soft_c, soft_l = (v.detach().cpu() for v in lg.soft())
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        q_c, q_l = torch.bernoulli(soft_c, generator=g), torch.bernoulli(soft_l, generator=g)
        lg.q_c.copy_(q_c)
        lg.q_l.copy_(q_l)
        self.epoch, self.epochs = epoch, epochs
        if self.config.mode == "grow":
            self._fresh_init(q_c.bool() & ~lg.ever_on.cpu(), g)
            lg.ever_on |= lg.q_c.bool()
        kept = self._set_lambda(q_c, q_l)
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

    def _set_lambda(self, q_c: torch.Tensor, q_l: torch.Tensor) -> float:
        """du for the rest of the epoch: the cost of ``q`` (this draw, or the next one's keep
        probabilities) against the target of the next draw."""
        kept = self.kept = self._cost_fraction(*self.logits.keep(q_c, q_l))
        du = (1 - self.target(self.epoch + 1)) - (1 - kept)
        self.lambda1, self.lambda2 = self.config.lambda1 * du, self.config.lambda2_base * du
        return kept

    def epoch_network(self, model: nn.Module) -> EpochNetwork | None:  # noqa: ARG002
        """Sparse epochs: the network sliced to the units this epoch's draw switched on (a group
        whose draw is all off keeps its best unit, at gate value 0) and without the branches of the
        blocks it switched off, gated like the whole one."""
        if self.plain is None:
            return None
        keep = np.ones(self.space.num_units, dtype=bool)
        free = self.logits.free.cpu().numpy()
        keep[free] = self.logits.q_c.cpu().numpy() > 0
        scores = self.logits.s_c.detach().cpu().numpy()
        group_of = self.space.unit_group()
        for gi, g in enumerate(self.space.groups):
            if not keep[g.offset:g.offset + g.size].any():
                mine = np.flatnonzero(group_of[free] == gi)
                keep[free[mine[np.argmax(scores[mine])]]] = True
        cut = np.flatnonzero(self.logits.q_l.cpu().numpy() == 0).tolist()  # drawn-off blocks
        if keep.all() and not cut:
            return None
        raw = {name: _raw_param(self.net, name) for name, _ in _tensors(self.plain)}
        with torch.no_grad():
            for name, t in _tensors(self.plain):
                t.copy_(raw[name])
        sub = sub_network(self.plain, self.space, keep)
        gates = attach_gates(sub.module, sub.space, cut=cut)
        part = ControlledModel(gates, PartController(self.logits, torch.from_numpy(sub.old_units)))
        # a cut branch's tensors are not in the part: they stay as they are for the epoch
        part_raw = {name: t for name in raw if (t := _raw_param(part.net, name, missing_ok=True)) is not None}
        pairs = [(raw[n], part_raw[n], lambda t, n=n: sub.gather(n, t), lambda w, p, n=n: sub.scatter(n, w, p))
                 for n, p in self.plain.named_parameters() if p.requires_grad and n in part_raw]
        pairs += [(p, p, lambda t: t, lambda w, p_: w.copy_(p_)) for p in self.logits.parameters()]

        def finish() -> None:
            for name, part_tensor in part_raw.items():
                sub.scatter(name, raw[name], part_tensor)
            part.release()
        return EpochNetwork(part, pairs, finish)

    def extra_loss(self, model, outputs, targets, indices) -> torch.Tensor:  # noqa: ARG002
        interval = self.config.lambda_interval
        if interval and self.steps and self.steps % interval == 0:
            self._set_lambda(*(v.detach() for v in self.logits.soft(ahead=True)))
        self.steps += 1
        soft_c, soft_l = self.logits.soft()
        return self.lambda1 * soft_c.sum() + self.lambda2 * soft_l.sum()

    def end_epoch(self, epoch: int, epochs: int) -> dict[str, float]:  # noqa: ARG002
        lg = self.logits
        if self.config.temperature == "per_gate":
            lg.t_c += lg.q_c
            lg.t_l += lg.q_l
        else:
            lg.t_c.fill_(epoch + 1)
            lg.t_l.fill_(epoch + 1)
        on_c, on_l = (lg.s_c.detach() > 0).double(), (lg.s_l.detach() > 0).double()
        return {"sign_cost": self._cost_fraction(*lg.keep(on_c, on_l))}

    def step_metrics(self) -> dict[str, float]:
        return {"cost": self.kept, "lam": self.lambda1}

    # -- plumbing --------------------------------------------------------------------------------
    def removable_blocks(self) -> list[str]:
        return [b.name for b in self.space.blocks] if self.config.layers else []

    def search(self, model: nn.Module, ctx: SearchContext, *, epochs_cfg, checkpoint=None,
               resume: bool = False) -> tuple[nn.Module, Decision, dict]:
        self.seed, self.budget = ctx.seed, ctx.budget
        self.init_std = {n: float(p.detach().float().std()) for n, p in model.named_parameters() if p.dim() > 1}
        self.plain = copy.deepcopy(model).cpu() if self.config.sparse_epochs else None
        prior = None
        if self.config.init == "importance" and self.config.channels:
            prior = importance_prior(model, self.space, ctx.budget.target, what=ctx.budget.what,
                                     round_to=ctx.round_to)
        gates = attach_gates(model, self.space)
        self.logits = ScsLogits(self.space, self.config, epochs_cfg.epochs, prior)
        controlled = ControlledModel(gates, self.logits)
        self.net = controlled.net
        history = ctx.trainer.fit(controlled, ctx.train_set, epochs_cfg, stage="search", batch_size=ctx.batch_size,
                                  val_set=ctx.val_set, hooks=self, checkpoint=checkpoint, resume=resume,
                                  criterion=ctx.criterion)
        decision, summary = self.decide(ctx)
        drawn = [h.extra["sampled_cost"] for h in history if "sampled_cost" in h.extra]
        # what a search epoch computed, as a share of the whole network's cost (budget units)
        summary["epoch_cost"] = [round(c, 4) for c in drawn] if self.config.sparse_epochs else [1.0] * len(drawn)
        summary["history"] = [h.row() for h in history]
        return controlled.release(), decision, summary

    def param_groups(self) -> list[dict]:
        c = self.config
        params = [p for p in (self.logits.s_c, self.logits.s_l) if isinstance(p, nn.Parameter)]
        return [{"params": params, "lr": c.logit_lr, "momentum": c.logit_momentum,
                 "weight_decay": c.logit_weight_decay}]

    def decide(self, ctx: SearchContext) -> tuple[Decision, dict]:
        """Blocks with s <= 0 go; channels are ranked by s and the best that fit the budget stay."""
        lg = self.logits
        scores = np.zeros(self.space.num_units)
        scores[lg.free.cpu().numpy()] = lg.s_c.detach().double().cpu().numpy()
        removed = [b.name for b, s in zip(self.space.blocks, lg.s_l.detach().cpu().tolist()) if s <= 0]
        decision = fit_to_budget(self.space, scores, ctx.budget.target, what=ctx.budget.what,
                                 round_to=ctx.round_to, removed_blocks=removed)
        kept = decision.keep_vector(self.space).numpy()[lg.free.cpu().numpy()] > 0.5
        sign = scores[lg.free.cpu().numpy()] > 0
        return decision, {"units_positive": int(sign.sum()), "units_kept": int(kept.sum()),
                          "units_free": int(len(sign)), "units_differing_from_sign": int((kept != sign).sum()),
                          "blocks_removed": removed}

    def _cost_fraction(self, units: torch.Tensor, blocks: torch.Tensor) -> float:
        return float(self.space.cost.fraction(self.budget.what, units, blocks))

    @torch.no_grad()
    def _fresh_init(self, newly_on: torch.Tensor, g: torch.Generator) -> None:
        """Grow mode: weights of units switched on for the first time are drawn anew."""
        if not newly_on.any():
            return
        flat = torch.zeros(self.space.num_units + 1, dtype=torch.bool)
        flat[self.logits.free.cpu()[newly_on]] = True
        for name, ps in self.space.param_slices.items():
            if name not in self.init_std:
                continue
            tensor = _raw_param(self.net, name)
            for d, units in ps.dims.items():
                hit = flat[torch.from_numpy(np.where(units >= 0, units, self.space.num_units))]
                if hit.any():
                    idx = hit.nonzero().flatten().to(tensor.device)
                    shape = list(tensor.shape)
                    shape[d] = len(idx)
                    fresh = torch.randn(shape, generator=g) * self.init_std[name]
                    tensor.index_copy_(d, idx, fresh.to(tensor.dtype).to(tensor.device))


def importance_prior(model: nn.Module, space: Space, target: float, *, what: str = "flops",
                     round_to: int | None = None) -> np.ndarray:
    """One value in [-1, 1] per free unit (``space.prunable_mask()``), for ``init: importance``.

    The sign is the ``prune`` baseline's decision at the budget (magnitude, normalised per group):
    + kept, - dropped.  The size is the unit's rank by that score inside its side, counted from the
    cut: the kept unit with the lowest score gets 1/n_kept, the best one 1; the dropped unit with
    the highest score gets -1/n_dropped, the worst one -1.  Units next to the cut start undecided
    (sigma(beta * s) near 1/2), units far from it start near 0 or 1.
    """
    normalised = normalise_by_group(space, get_importance("magnitude")(model, space))
    keep = fit_to_budget(space, normalised, target, what=what, round_to=round_to).keep_vector(space).numpy() > 0.5
    free = np.flatnonzero(space.prunable_mask())
    prior = np.zeros(len(free))
    for side, sign in ((keep[free], 1.0), (~keep[free], -1.0)):
        idx = np.flatnonzero(side)
        order = np.argsort(sign * normalised[free[idx]], kind="stable")  # nearest the cut first
        prior[idx[order]] = sign * np.arange(1, len(idx) + 1) / max(len(idx), 1)
    return prior


def _tensors(model: nn.Module):
    """Every parameter and floating buffer of a plain model, by name."""
    yield from model.named_parameters()
    yield from ((n, b) for n, b in model.named_buffers() if b.is_floating_point())


def _raw_param(net: nn.Module, name: str, missing_ok: bool = False) -> torch.Tensor | None:
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
