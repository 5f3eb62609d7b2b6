"""Latency budgets measured in onnxruntime: a per-machine table of layer latencies (:mod:`.table`,
:mod:`.units`) makes latency a differentiable cost like FLOPs (:mod:`.cost`); after the decision
the whole model is measured against the original and the budget corrected (:mod:`.correct`)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from ..export.onnx import export_onnx
from ..space import Space
from .correct import Meter, Round, meet_latency, redecider, rounds_table
from .cost import Coverage, LatencyCost
from .table import LatencyTable, Settings, cache_dir
from .units import GRID, Unit, find_units

__all__ = ["GRID", "Coverage", "LatencyCost", "LatencyTable", "Meter", "Round", "Settings", "Unit", "attach_latency",
           "budget_summary", "cache_dir", "find_units", "meet_latency", "redecider", "rounds_table"]


def attach_latency(space: Space, model: nn.Module, example: torch.Tensor, settings: Settings, *,
                   progress: bool = False) -> LatencyCost:
    """Build (or load from the cache) the latency table of ``model``'s layers, time the whole
    original once, and make ``"latency"`` a cost of ``space`` (``space.cost.fraction("latency",
    ...)``).  ``example``: one input at the deployment's image size (its batch is ignored).  The
    cost's ``block`` is the channel multiple this CPU's convolutions run in (widths round to it)."""
    units = find_units(model, example[:1], space.cost.flops_terms)
    table = LatencyTable.load(settings).fill(list(units.values()), progress=progress)
    with tempfile.TemporaryDirectory(prefix="compressor-latency-") as tmp:
        path = Path(tmp) / "original.onnx"
        export_onnx(model.eval(), path, example[:1], check=False, dynamic_batch=True)
        whole = table.time(str(path), [settings.batch, *example.shape[1:]])
    cost = LatencyCost(space.cost, units, table, whole, table.overhead(), table.block())
    space.cost.attach("latency", cost)
    return cost


def budget_summary(cost: LatencyCost, rounds: list[Round], target: float, settings: Settings,
                   tolerance: float) -> dict:
    """The report's facts about a latency budget: settings, the table, each round, the verdict."""
    import onnxruntime as ort

    from ..machine import cpu_name

    table = cost.table
    final = min(rounds, key=lambda r: abs(r.measured / target - 1)) if rounds else None
    return {"target": target, "tolerance": tolerance,
            "settings": {"cpu": cpu_name(), "onnxruntime": ort.__version__, "provider": "CPUExecutionProvider",
                         "graph_optimization": "ORT_ENABLE_ALL", "batch": settings.batch,
                         "threads": settings.threads or "onnxruntime default (one per core)"},
            "table": {"file": str(table.path), "layers_measured": table.measured, "build_seconds": round(table.seconds, 1),
                      "layer_kinds": cost.coverage.units, "channel_block": cost.block, "terms_timed": cost.coverage.terms,
                      "whole_ms": round(cost.coverage.whole_ms, 4), "units_ms": round(cost.coverage.units_ms, 4),
                      "fixed_ms": round(cost.coverage.fixed_ms, 4), "rest_ms": round(cost.coverage.rest_ms, 4)},
            "rounds": rounds_table(rounds),
            "measured": final.measured if final else None,
            "met": bool(final and abs(final.measured / target - 1) <= tolerance)}
