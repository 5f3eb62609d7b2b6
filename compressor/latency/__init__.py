"""Latency budgets measured in onnxruntime: a per-machine table of layer latencies (:mod:`.table`,
:mod:`.units`) makes latency a differentiable cost like FLOPs (:mod:`.cost`); after the decision
the whole model is measured against the original and the budget corrected (:mod:`.correct`)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..budget import BudgetError, decide, smallest_decision
from ..decision import Decision
from ..space import Space
from ..surgery import slice_model
from .correct import (
    CONFIRM,
    Meter,
    Redecider,
    Round,
    closest,
    correctable_kinds,
    magnitude_scores,
    median_pair,
    meet_latency,
    rounds_table,
)
from .cost import Coverage, LatencyCost
from .table import LatencyTable, Settings, cache_dir
from .units import GRID, Unit, find_units

CALIBRATE_AT = 0.4  # FLOPs kept by the decision the table is calibrated on

__all__ = ["GRID", "Coverage", "LatencyCost", "LatencyTable", "Meter", "Redecider", "Round", "Settings", "Unit", "attach_latency",
           "budget_summary", "cache_dir", "correctable_kinds", "find_units", "meet_latency", "rounds_table"]


def attach_latency(space: Space, model: nn.Module, example: torch.Tensor, settings: Settings, *,
                   progress: bool = False, calibrate_at: float | None = CALIBRATE_AT, repeats: int = 100,
                   smallest_of: Sequence[str] = (), fixed: Decision | None = None) -> LatencyCost:
    """Build (or load from the cache) the latency table of ``model``'s layers, time the whole
    original side by side with one smaller decision (magnitude pruning to ``calibrate_at`` of the
    FLOPs, None: no calibration; the median of :data:`CONFIRM` measurements of ``repeats`` runs
    each, :class:`Meter`), and make ``"latency"`` a cost of ``space``
    (``space.cost.fraction("latency", ...)``).  ``example``: one input at the deployment's image
    size.  The cost's ``block`` is the channel multiple this CPU's convolutions run in.

    ``smallest_of``: kinds whose smallest decision (``fixed`` elsewhere) is measured too, as the
    cost's ``floor``: the least latency ratio any budget over them can reach here; the
    calibration then runs through it below the calibration decision."""
    units = find_units(model, example[:1], space.cost.flops_terms)
    table = LatencyTable.load(settings).fill(list(units.values()), progress=progress)
    block = table.block()
    smaller = _calibration_decision(space, model, calibrate_at, block) if calibrate_at else None
    meter = Meter(model, example[:1], batch=settings.batch, threads=settings.threads, repeats=repeats)

    def measured(decision: Decision) -> tuple[float, float]:  # sliced once, timed CONFIRM times
        sliced = slice_model(model, space, decision)
        return median_pair([meter(sliced) for _ in range(CONFIRM)])

    try:
        if smaller is None:
            whole, ratio = table.time(str(meter.original), [settings.batch, *example.shape[1:]]), None
        else:
            whole, compressed = measured(smaller)
            ratio = compressed / whole
        smallest = smallest_decision(space, list(smallest_of), fixed=fixed, round_to=block) if smallest_of else None
        floor = measured(smallest) if smallest is not None else None
    finally:
        meter.close()
    cost = LatencyCost(space.cost, units, table, whole, table.overhead(), block)
    at = space.cost.flat(smaller.values(space)) if smaller is not None else None
    if at is not None:
        cost.calibrate(at, ratio)
    space.cost.attach("latency", cost)
    if floor:  # the smallest decision: its measured ratio, and the budget a decision for it asks
        cost.floor = floor[1] / floor[0]
        if at is not None:
            cost.calibrate_below(space.cost.flat(smallest.values(space)), cost.floor, at)
        cost.floor_budget = smallest.cost(space, "latency") / space.cost.full("latency")
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
            "smallest_measured": None if cost.floor is None else round(cost.floor, 4),
            "rounds": rounds_table(rounds),
            "measured": final.measured if final else None,
            "met": bool(final and abs(final.measured / target - 1) <= tolerance)}
