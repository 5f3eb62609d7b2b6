"""What a method plugs into the trainer.  Every hook has a do-nothing default."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TrainHooks:
    """Extension points of :class:`~compressor.train.Trainer`, in the order they are called:

    * ``param_groups()``: extra optimizer groups with their own settings (e.g. gate logits);
    * ``begin_epoch(epoch, epochs)``: per-epoch updates (sample masks, update penalties); returns
      metrics to log;
    * ``epoch_network(model)``: optionally a smaller :class:`~compressor.train.part.EpochNetwork`
      to train this epoch instead of ``model`` (scs: the units its draw switched on);
    * ``extra_loss(model, outputs, targets, indices)``: added to the task loss at every step
      (``indices``: the samples' positions in the training set);
    * ``arch_step(held_out, batch)``: when ``has_arch_step``, called before each weight step with a
      held-out batch and the coming training batch, each ``(x, y, indices)`` (bilevel search);
    * ``end_epoch(epoch, epochs)``: returns metrics to log;
    * ``state_dict()``/``load_state_dict()``: everything a resumed run needs.
    """

    has_arch_step = False

    def param_groups(self) -> list[dict[str, Any]]:
        return []

    def begin_epoch(self, epoch: int, epochs: int) -> dict[str, float]:  # noqa: ARG002
        return {}

    def epoch_network(self, model: nn.Module):  # noqa: ARG002
        return None

    def extra_loss(self, model: nn.Module, outputs: torch.Tensor, targets: torch.Tensor,  # noqa: ARG002
                   indices: torch.Tensor) -> torch.Tensor | None:  # noqa: ARG002
        return None

    def arch_step(self, held_out: tuple[torch.Tensor, ...], batch: tuple[torch.Tensor, ...]) -> None:  # noqa: ARG002
        return None

    def end_epoch(self, epoch: int, epochs: int) -> dict[str, float]:  # noqa: ARG002
        return {}

    def step_metrics(self) -> dict[str, float]:
        """Cheap live numbers for the progress bar."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: ARG002
        return None
