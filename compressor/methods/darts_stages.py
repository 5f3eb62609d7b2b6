"""P-DARTS's growing depth (Chen et al. ICCV 2019; METHODS.md section 4.2).

    the search epochs split evenly into len(stages) + 1 stages
    stage i < last: a network of model_args.layers = stage_layers[i] (SearchContext.variants),
                    fresh weights, fresh alpha over the options the stage before kept;
                    searched for its epochs; then every tie keeps its stages[i] most probable options
    last stage:     the run's own network, from the options the stage before kept

Ties carry the options from one depth to the next: the edge at one position of every normal (or
reduction) cell is one row of alpha at any depth.  A row the shallower network lacks keeps every
option.  Each stage checkpoints as ``search-stage<i>.pt`` beside the search's own checkpoint, so a
resumed run skips the stages it finished.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from torch.utils.data import Dataset

from ..gates import attach_gates
from ..space import Space
from .base import SearchContext

if TYPE_CHECKING:
    from .darts import DartsConfig, DartsMethod
    from .darts_arch import OpLogits


def stage_epochs(epochs: int, stages: int) -> list[int]:
    """``epochs`` split evenly into ``stages`` consecutive stages (the first shorter when uneven)."""
    cuts = [round(epochs * i / stages) for i in range(stages + 1)]
    return [b - a for a, b in zip(cuts, cuts[1:])]


def skip_dropout_at(rates: float | list[float], epoch: int, epochs: int, *, last_stage: bool = False) -> float:
    """P-DARTS's skip dropout at ``epoch`` of ``epochs``: one rate decays linearly to 0 over the
    whole search; a rate per stage decays over its stage's epochs (``last_stage``: these epochs
    are the last stage alone, the earlier ones having run on shallower networks)."""
    if not isinstance(rates, list):
        return rates * (1 - epoch / max(epochs, 1))
    if last_stage:
        return rates[-1] * (1 - epoch / max(epochs, 1))
    start = 0
    for rate, length in zip(rates, stage_epochs(epochs, len(rates))):
        if epoch < start + length:
            return rate * (1 - (epoch - start) / length)
        start += length
    return 0.0


def shallower_stages(make: Callable[[DartsConfig, Space], DartsMethod], config: DartsConfig, ctx: SearchContext,
                     weight_set: Dataset, arch_set: Dataset) -> tuple[dict[str, list[dict]], list[dict], list[dict]]:
    """Search every stage before the last on its network (``ctx.variants``, in order).  Returns
    the options each tie kept after them, their per-epoch rows (with their ``stage``) and their
    softmax(alpha) per epoch by tie."""
    rates = config.skip_dropout if isinstance(config.skip_dropout, list) else [config.skip_dropout] * len(config.stages)
    epochs = stage_epochs(ctx.epochs.epochs, len(config.stages) + 1)
    kept: dict[str, list[dict]] | None = None
    rows: list[dict] = []
    alphas: list[dict[str, list[float]]] = []
    for i, ((net, space), keep) in enumerate(zip(ctx.variants, config.stages)):
        stage = make(config.model_copy(update={"stages": [], "stage_layers": [], "skip_dropout": rates[i]}), space)
        gates = attach_gates(net, space)
        gates.model.to(ctx.trainer.device)
        controlled = stage.supernet(gates, ctx, sizes=(len(weight_set), len(arch_set)))
        if kept is not None:
            stage.arch.restrict(kept)
        spec = ctx.stage(f"search-stage{i + 1}", train_set=weight_set, val_set=None, arch_set=arch_set, hooks=stage,
                         config=ctx.epochs.model_copy(update={"epochs": epochs[i]}))
        rows += [{**h.row(), "stage": i + 1} for h in ctx.trainer.fit(controlled, spec)]
        ties = stage.arch.site_ties
        alphas += [dict(zip(ties, per_site)) for per_site in stage.alpha_history]
        stage.arch.drop(keep)
        kept = stage.arch.kept()
    return kept or {}, rows, alphas


def alpha_by_site(arch: OpLogits, by_tie: dict[str, list[float]]) -> list[list[float]]:
    """A shallower stage's softmax(alpha) (per site, by tie) as ``arch``'s sites x options
    (uniform over a site's options where that stage had no such tie)."""
    width = int(arch.allowed.shape[1])
    return [by_tie.get(t) or [1 / len(s.options)] * len(s.options) + [0.0] * (width - len(s.options))
            for t, s in zip(arch.site_ties, arch.sites)]
