"""Learning-rate schedules as a per-step factor of the peak rate: linear warm-up, then cosine,
step or constant."""
from __future__ import annotations

import bisect
import math

from ..recipe import TrainConfig


def lr_factor(cfg: TrainConfig, steps_per_epoch: int):
    """``f(step) -> factor`` for ``torch.optim.lr_scheduler.LambdaLR``."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    bounds = sorted(int(round(m * total)) for m in cfg.milestones)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "cosine":
            t = (step - warm) / max(1, total - warm)
            return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        if cfg.schedule == "step":
            return cfg.gamma ** bisect.bisect_right(bounds, step)
        return 1.0

    return factor
