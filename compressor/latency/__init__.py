"""Latency budgets measured in onnxruntime: a per-machine table of layer latencies (:mod:`.table`,
:mod:`.units`) makes latency a differentiable cost like FLOPs (:mod:`.cost`); after the decision
the whole model is measured against the original and the budget corrected (:mod:`.correct`)."""
from __future__ import annotations

import torch
from torch import nn

from ..budget import BudgetError, decide
from ..decision import Decision
from ..space import Space
from ..surgery import slice_model
from .correct import Meter, Round, closest, magnitude_scores, meet_latency, redecider, rounds_table
from .cost import Coverage, LatencyCost
from .table import LatencyTable, Settings, cache_dir
from .units import GRID, Unit, find_units

CALIBRATE_AT = 0.4  # FLOPs kept by the decision the table is calibrated on

__all__ = ["GRID", "Coverage", "LatencyCost", "LatencyTable", "Meter", "Round", "Settings", "Unit", "attach_latency",
           "budget_summary", "cache_dir", "find_units", "meet_latency", "redecider", "rounds_table"]


def attach_latency(space: Space, model: nn.Module, example: torch.Tensor, settings: Settings, *,
                   progress: bool = False, calibrate_at: float | None = CALIBRATE_AT, repeats: int = 100) -> LatencyCost:
    """Build (or load from the cache) the latency table of ``model``'s layers, time the whole
    original side by side with one smaller decision (magnitude pruning to ``calibrate_at`` of the
    FLOPs, None: no calibration; ``repeats`` runs of each, :class:`Meter`), and make ``"latency"`` a cost of ``space``
    (``space.cost.fraction("latency", ...)``).  ``example``: one input at the deployment's image
    size.  The cost's ``block`` is the channel multiple this CPU's convolutions run in."""
    units = find_units(model, example[:1], space.cost.flops_terms)
    table = LatencyTable.load(settings).fill(list(units.values()), progress=progress)
    block = table.block()
    smaller = _calibration_decision(space, model, calibrate_at, block) if calibrate_at else None
    meter = Meter(model, example[:1], batch=settings.batch, threads=settings.threads, repeats=repeats)
    try:
        if smaller is None:
            whole, ratio = table.time(str(meter.original), [settings.batch, *example.shape[1:]]), None
        else:  # three side-by-side measurements, the middle one: a run disturbed once does not decide
            pairs = sorted((c / o, o) for o, c in (meter(slice_model(model, space, smaller)) for _ in range(3)))
            ratio, whole = pairs[1]
    finally:
        meter.close()
    cost = LatencyCost(space.cost, units, table, whole, table.overhead(), block)
    if smaller is not None:
        cost.calibrate(space.cost.flat(smaller.values(space)), ratio)
    space.cost.attach("latency", cost)
    return cost


def _calibration_decision(space: Space, model: nn.Module, flops: float, round_to: int | None) -> Decision | None:
    try:
        return decide(space, magnitude_scores(model, space), flops, round_to=round_to)
    except BudgetError:
        return None


def budget_summary(cost: LatencyCost, rounds: list[Round], target: float, tolerance: float) -> dict:
    """The report's facts about a latency budget: settings, the table, each round, the verdict."""
    import onnxruntime as ort

    from ..machine import cpu_name

    table = cost.table
    settings = table.settings
    final = rounds[closest(rounds, target)] if rounds else None
    return {"target": target, "tolerance": tolerance,
            "settings": {"cpu": cpu_name(), "onnxruntime": ort.__version__, "provider": "CPUExecutionProvider",
                         "graph_optimization": "ORT_ENABLE_ALL", "batch": settings.batch,
                         "threads": settings.threads or "onnxruntime default (one per core)"},
            "table": {"file": str(table.path), "layers_measured": table.measured, "build_seconds": round(table.seconds, 1),
                      "layer_kinds": cost.coverage.units, "channel_block": cost.block, "terms_timed": cost.coverage.terms,
                      "whole_ms": round(cost.coverage.whole_ms, 4), "units_ms": round(cost.coverage.units_ms, 4),
                      "fixed_ms": round(cost.coverage.fixed_ms, 4), "rest_ms": round(cost.coverage.rest_ms, 4),
                      "calibration": cost.calibration},
            "rounds": rounds_table(rounds),
            "measured": final.measured if final else None,
            "met": bool(final and abs(final.measured / target - 1) <= tolerance)}
