"""``prune``: the one-shot baseline.

    optionally drop the residual blocks whose skipping costs the least loss
    score every slot the weights rank (units, kernel rings: magnitude, or first-order Taylor on a
        few training batches), normalised per site
    keep the best slots that fit the budget (compressor.budget.decide)
    fine-tune (the search epochs go to fine-tuning: equal total epochs)
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..budget import decide
from ..decision import Decision
from ..gates.outputs import first_output
from ..importance import drop_loss, get_importance
from ..recipe import MethodConfig, RecipeError
from ..space import Space
from .base import Method, SearchContext, SearchResult, register_method


class PruneConfig(MethodConfig):
    """One-shot importance pruning to the budget, then fine-tuning (the baseline)."""

    name: Literal["prune"] = "prune"
    importance: Literal["magnitude", "taylor"] = Field("magnitude", description="Per-slot score.")
    taylor_batches: int = Field(8, ge=1, description="Batches whose gradients the Taylor score sums.")
    blocks: int = Field(0, ge=0, description="Also remove this many residual blocks: those whose skipping "
                        "raises the training loss least (the other kinds then fill the budget around them).")
    block_batches: int = Field(4, ge=1, description="Training batches the block scores are measured on.")


@register_method
class PruneMethod(Method):
    """one-shot magnitude/Taylor pruning to the budget, then fine-tuning (the baseline)"""

    name = "prune"
    config_class = PruneConfig
    config: PruneConfig
    trains_in_search = False

    def __init__(self, config: PruneConfig, space: Space) -> None:
        super().__init__(config, space)
        blocks = space["depth"].size if "depth" in space else 0
        if config.blocks > blocks:
            raise RecipeError(f"method.blocks: {config.blocks} blocks to remove, but the model has only "
                              f"{blocks} removable residual blocks")

    def fixed(self) -> Decision:
        """The ``blocks`` residual blocks whose skipping saves the most FLOPs at full width, as
        removed: which ones go is known only after training, and the early budget check must not
        pass a budget that only removing more of them could meet."""
        if not self.config.blocks:
            return Decision()
        names = self.space["depth"].items()
        left = {n: Decision({"depth": [n]}).flops(self.space) for n in names}
        return Decision({"depth": sorted(names, key=left.__getitem__)[:self.config.blocks]})

    def search(self, model: nn.Module, ctx: SearchContext) -> SearchResult:
        removed = self._least_important_blocks(model, ctx) if self.config.blocks else []
        if self.config.importance == "taylor":
            self._accumulate_gradients(model, ctx)
        scores = get_importance(self.config.importance)(model, self.space)
        model.zero_grad(set_to_none=True)
        decision = decide(self.space, scores, ctx.budget.target, what=ctx.budget.what, round_to=ctx.round_to,
                          fixed=Decision({"depth": removed}))
        return SearchResult(model, decision, {"importance": self.config.importance, "blocks_removed": removed})

    def _least_important_blocks(self, model: nn.Module, ctx: SearchContext) -> list[str]:
        batches = list(_training_batches(model, ctx, self.config.block_batches))
        with ctx.trainer.autocast():
            scores = drop_loss(model, self.space, "depth", batches)
        blocks = self.space["depth"].blocks
        return sorted(blocks[i].name for i in np.argsort(scores, kind="stable")[:self.config.blocks])

    def _accumulate_gradients(self, model: nn.Module, ctx: SearchContext) -> None:
        """Sum the loss gradients of ``taylor_batches`` training batches into ``.grad``."""
        model.zero_grad(set_to_none=True)
        for x, y in _training_batches(model, ctx, self.config.taylor_batches):
            with ctx.trainer.autocast():
                out = model(x)
            F.cross_entropy(first_output(out).float(), y).backward()


def _training_batches(model: nn.Module, ctx: SearchContext, n: int):
    """``ctx``'s first ``n`` training batches, with ``model`` moved to the trainer's device in eval
    mode (scoring leaves the running statistics as trained)."""
    model.to(ctx.trainer.device).eval()
    yield from ctx.training_batches(n)
