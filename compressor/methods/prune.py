"""``prune``: the one-shot baseline.  Optionally drop the residual blocks whose skipping costs the
least loss; score every unit (magnitude, or first-order Taylor on a few training batches); keep
the best units that fit the budget; then fine-tune.  No training in search."""
from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import nn

from ..budget import fit_to_budget
from ..gates.outputs import first_output
from ..decision import Decision
from ..importance import block_drop_loss, get_importance
from ..recipe import PruneConfig, RecipeError
from ..space import Space
from .base import Method, SearchContext, register_method


@register_method("prune")
class PruneMethod(Method):
    config: PruneConfig
    trains_in_search = False

    def __init__(self, config: PruneConfig, space: Space) -> None:
        super().__init__(config, space)
        if config.blocks > len(space.blocks):
            raise RecipeError(f"method.blocks: {config.blocks} blocks to remove, but the model has only "
                              f"{len(space.blocks)} removable residual blocks")

    def removable_blocks(self) -> list[str]:
        return [b.name for b in self.space.blocks] if self.config.blocks else []

    def search(self, model: nn.Module, ctx: SearchContext, *, epochs_cfg=None, checkpoint=None,  # noqa: ARG002
               resume: bool = False) -> tuple[nn.Module, Decision, dict]:
        removed = self._least_important_blocks(model, ctx) if self.config.blocks else []
        if self.config.importance == "taylor":
            self._accumulate_gradients(model, ctx)
        scores = get_importance(self.config.importance)(model, self.space)
        model.zero_grad(set_to_none=True)
        decision = fit_to_budget(self.space, scores, ctx.budget.target, what=ctx.budget.what,
                                 round_to=ctx.round_to, normalize=True, removed_blocks=removed)
        return model, decision, {"importance": self.config.importance, "blocks_removed": removed}

    def _least_important_blocks(self, model: nn.Module, ctx: SearchContext) -> list[str]:
        batches = list(_training_batches(model, ctx, self.config.block_batches))
        with ctx.trainer.autocast():
            scores = block_drop_loss(model, self.space, batches)
        return sorted(self.space.blocks[i].name for i in np.argsort(scores, kind="stable")[:self.config.blocks])

    def _accumulate_gradients(self, model: nn.Module, ctx: SearchContext) -> None:
        """Sum the loss gradients of ``taylor_batches`` training batches into ``.grad``."""
        model.zero_grad(set_to_none=True)
        for x, y in _training_batches(model, ctx, self.config.taylor_batches):
            with ctx.trainer.autocast():
                out = model(x)
            F.cross_entropy(first_output(out).float(), y).backward()


def _training_batches(model: nn.Module, ctx: SearchContext, n: int):
    """The first ``n`` shuffled training batches on the trainer's device, with ``model`` moved
    there in eval mode (scoring leaves the running statistics as trained)."""
    trainer = ctx.trainer
    model.to(trainer.device).eval()
    for _, (x, y) in zip(range(n), trainer.loader(ctx.train_set, ctx.batch_size, shuffle=True)):
        yield x.to(trainer.device), y.to(trainer.device)
