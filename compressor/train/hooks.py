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
    * ``extra_loss(model, outputs, targets)``: added to the task loss at every step;
    * ``arch_step(batch)``: when ``has_arch_step``, called with a held-out batch before each weight
      step (bilevel search);
    * ``end_epoch(epoch, epochs)``: returns metrics to log;
    * ``state_dict()``/``load_state_dict()``: everything a resumed run needs.
    """

    has_arch_step = False

    def param_groups(self) -> list[dict[str, Any]]:
        return []

    def begin_epoch(self, epoch: int, epochs: int) -> dict[str, float]:  # noqa: ARG002
        return {}

    def extra_loss(self, model: nn.Module, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:  # noqa: ARG002
        return None

    def arch_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:  # noqa: ARG002
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
