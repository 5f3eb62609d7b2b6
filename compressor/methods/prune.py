"""``prune``: the one-shot baseline.  Score every unit (magnitude, or first-order Taylor on a few
training batches), keep the best that fit the budget, then fine-tune; no training in search."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..budget import fit_to_budget
from ..checks import first_output
from ..decision import Decision
from ..importance import get_importance
from ..recipe import PruneConfig
from .base import Method, SearchContext, register_method


@register_method("prune")
class PruneMethod(Method):
    config: PruneConfig
    trains_in_search = False

    def search(self, model: nn.Module, ctx: SearchContext, *, epochs_cfg=None, checkpoint=None,  # noqa: ARG002
               resume: bool = False) -> tuple[nn.Module, Decision, dict]:
        if self.config.importance == "taylor":
            self._accumulate_gradients(model, ctx)
        scores = get_importance(self.config.importance)(model, self.space)
        model.zero_grad(set_to_none=True)
        decision = fit_to_budget(self.space, scores, ctx.budget.target, what=ctx.budget.what,
                                 round_to=ctx.round_to, normalize=True)
        return model, decision, {"importance": self.config.importance}

    def _accumulate_gradients(self, model: nn.Module, ctx: SearchContext) -> None:
        """Sum the loss gradients of ``taylor_batches`` training batches into ``.grad``."""
        trainer = ctx.trainer
        model.to(trainer.device).eval()  # running statistics stay as trained
        model.zero_grad(set_to_none=True)
        loader = trainer.loader(ctx.train_set, ctx.batch_size, shuffle=True)
        for i, (x, y) in enumerate(loader):
            if i == self.config.taylor_batches:
                break
            x, y = x.to(trainer.device), y.to(trainer.device)
            with trainer.autocast():
                out = model(x)
            F.cross_entropy(first_output(out).float(), y).backward()
