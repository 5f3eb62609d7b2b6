"""``compress``: from a model and a recipe to an output directory, stage by stage
(:mod:`compressor.pipeline`): prepare -> base -> search -> finalize -> finetune -> export -> report.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn
from torch.utils.data import Dataset

from .decision import Decision
from .pipeline import STAGES, OutputError, OutputExistsError, Run
from .prepare import Prepared, default_out, prepare
from .recipe import Recipe
from .report import Stopwatch

__all__ = ["CompressResult", "OutputError", "OutputExistsError", "Prepared", "compress", "default_out", "prepare"]


@dataclass
class CompressResult:
    """The compressed dense model (eval mode, CPU), its decision, the report and where it lives."""

    model: nn.Module
    decision: Decision
    report: dict[str, Any]
    out: Path


def compress(model: nn.Module | str, recipe: Recipe | dict | str | os.PathLike | None = None,
             data: str | os.PathLike | tuple[Dataset, Dataset] | None = None, *,
             out: str | os.PathLike | None = None, resume: bool = False,
             overrides: dict[str, Any] | None = None,
             callbacks: tuple[Callable[[str, int, int], None], ...] = ()) -> CompressResult:
    """Compress ``model`` under ``recipe`` and write the result to ``out``.

    Args:
        model: a model name (torchvision or timm) or an ``nn.Module``, which is trained in place
            (its class is recorded so the saved model can be rebuilt, with ``trust_source``).
        recipe: a :class:`Recipe`, a dict, a YAML path or a built-in recipe name.
        data: a data path (ImageFolder/CIFAR), ``(train, test)`` datasets, or None for the
            recipe's (the embedded MNIST subset by default).
        out: output directory (default ``runs/<model>-<method>-<budget>``).
        resume: continue the interrupted run in ``out``.
        overrides: dotted recipe keys set on top, e.g. ``{"budget.flops": 0.25}``.
        callbacks: ``(stage, epoch, step)`` after every training step.

    Example:
        >>> result = compress("resnet18", {"budget": {"flops": 0.5}, "search": {"epochs": 1}})
        >>> result.report["compressed"]["flops_fraction_fvcore"] <= 0.5
        True
    """
    clock = Stopwatch()
    with clock("prepare"):
        prepared = prepare(model, recipe, data, out=out, overrides=overrides)
    run = Run(prepared, resume=resume, callbacks=callbacks, clock=clock)
    for stage in STAGES:
        getattr(run, stage)()
    return CompressResult(run.compressed, run.result.decision, run.report_dict, run.out)
