"""Latency as a differentiable cost of a decision, from a :class:`~.table.LatencyTable`.

``latency(v) = sum_u T_u(out_u(v), in_u(v)) * s_u(v) + R * rest(v)``:

* ``T_u`` interpolates unit ``u``'s measured grid bilinearly in its kept fractions (the sums of its
  FLOPs term's two channel factors over their full values; zero at zero width), made
  non-decreasing along each axis first, so that keeping more never predicts less;
* ``s_u`` carries what else the FLOPs term carries: a residual block's scale and liveness, an
  operation choice's slot, a kernel window's rings (as a fraction of the full value);
* ``rest`` is the FLOPs of every term without a unit over their full FLOPs, and ``R`` the part of
  the whole original model's measured latency the units and a run's fixed cost (an empty graph's
  time, ``F``, added as a constant) do not account for; at least a tenth of the whole, since a
  model of nothing but units still runs the rest of its graph.

Layers timed alone run slower than inside the whole graph (their inputs are not warm in cache,
every run allocates its output), most of all when narrow, so the sum over-predicts small models.
:meth:`LatencyCost.calibrate` fits ``a * latency(v) + b`` through two whole-model measurements,
the original and one smaller decision; :meth:`LatencyCost.calibrate_below` a second line, below
that decision, through the smallest decision measured (the line through the first two points,
extended, predicted 0.02 of mobilenet_v2's latency at 32 px for decisions that measured 0.33:
per-operator overhead the table's narrow widths do not carry).  The budget is a fraction of the prediction at the
original; the pipeline measures what the decision really runs at and corrects the budget
(:mod:`.correct`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..space.cost import CompiledTerms, CostModel, Term
from .table import LatencyTable
from .units import GRID, Unit

REST_FLOOR = 0.1


@dataclass
class Coverage:
    """How the prediction of the original splits: the units' sum and the rest, in ms."""

    whole_ms: float
    units_ms: float
    fixed_ms: float
    rest_ms: float
    units: int
    terms: int


class LatencyCost:
    """``cost(flat) -> predicted ms`` over a cost model's flat slot vector (see the module doc);
    ``coverage`` says how the original's prediction splits."""

    def __init__(self, cost: CostModel, units: dict[int, Unit], table: LatencyTable, whole_ms: float,
                 fixed_ms: float = 0.0, block: int | None = None) -> None:
        """``whole_ms``: the original model measured whole; ``fixed_ms``: an empty graph's run;
        ``block``: the channel multiple widths round to, None when none was measured (kept for the
        pipeline and the report)."""
        self.table, self.block = table, block
        terms = cost.flops_terms
        self.index = sorted(units)
        measured = [terms[i] for i in self.index]
        channel = [[f for f in t.factors if f.kind == "channels"] for t in measured]
        self._out = CompiledTerms([Term("out", t.module, 1.0, (c[0],)) for t, c in zip(measured, channel)],
                                  cost.offsets, cost.total)
        self._in = CompiledTerms([Term("in", t.module, 1.0, tuple(c[1:2])) for t, c in zip(measured, channel)],
                                 cost.offsets, cost.total)
        self._scale = CompiledTerms([t.with_(coef=1.0, factors=tuple(f for f in t.factors if f.kind != "channels"))
                                     for t in measured], cost.offsets, cost.total)
        rest = [t for i, t in enumerate(terms) if i not in units]
        self._rest = CompiledTerms(rest, cost.offsets, cost.total)
        self.grid = torch.tensor((0.0, *GRID), dtype=torch.double)
        self.tables = torch.stack([self._padded(table[units[i]]) for i in self.index]) if self.index \
            else torch.zeros(0, len(GRID) + 1, len(GRID) + 1, dtype=torch.double)
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        full = self._full_flat = cost.flat()
        self._full = {name: part.per_term(full).detach() for name, part in
                      (("out", self._out), ("in", self._in), ("scale", self._scale))}
        self._rest_full = float(self._rest(full))
        units_ms = float(self._units(full).sum())
        fixed_ms = min(fixed_ms, whole_ms)
        self.coverage = Coverage(whole_ms, units_ms, fixed_ms, max(whole_ms - units_ms - fixed_ms, REST_FLOOR * whole_ms),
                                 len({u.key() for u in units.values()}), len(units))
        self.scale, self.offset = 1.0, 0.0
        self.below: tuple[float, float, float] | None = None  # (raw at the knee, scale, offset) under it
        self.calibration: dict | None = None
        self.floor: float | None = None  # the smallest decision's measured ratio, where one was measured
        self.floor_budget: float | None = None  # and its predicted fraction

    def calibrate(self, v: torch.Tensor, measured: float) -> None:
        """Fit the affine correction so that the original predicts ``whole_ms`` and the decision
        ``v`` (a flat slot vector) predicts ``measured`` of it; kept only when it rescales by a
        factor in [0.5, 2] (otherwise the two measurements disagree with the table too much to
        trust either, and the table stands alone)."""
        whole = self.coverage.whole_ms
        raw_full, raw = float(self.raw(self._full_flat)), float(self.raw(v))
        before = raw / raw_full
        scale = whole * (1 - measured) / (raw_full - raw) if raw_full > raw else 0.0
        used = 0.5 <= scale * raw_full / whole <= 2.0
        if used:
            self.scale, self.offset = scale, whole - scale * raw_full
        self.calibration = {"measured": round(measured, 4), "table_alone": round(before, 4), "used": used}

    def calibrate_below(self, v: torch.Tensor, measured: float, knee: torch.Tensor) -> None:
        """A second line under the calibration decision ``knee`` (a flat slot vector): through it
        and the decision ``v`` measured at ``measured`` of the original; kept only where it rises
        and the calibration above was kept."""
        if not (self.calibration and self.calibration["used"]):
            return
        whole, raw_knee, raw = self.coverage.whole_ms, float(self.raw(knee)), float(self.raw(v))
        at_knee = self.scale * raw_knee + self.offset
        used = raw < raw_knee and measured * whole < at_knee
        if used:
            scale = (at_knee - measured * whole) / (raw_knee - raw)
            self.below = (raw_knee, scale, at_knee - scale * raw_knee)
        self.calibration.update(smallest_measured=round(measured, 4),
                                smallest_table_alone=round(raw / float(self.raw(self._full_flat)), 4), below_used=used)

    @staticmethod
    def _padded(grid: np.ndarray) -> torch.Tensor:
        """The grid with a zero row/column at width 0, non-decreasing along each axis, as 2-D."""
        g = np.maximum.accumulate(np.asarray(grid, dtype=np.float64), axis=0)
        g = np.maximum.accumulate(g, axis=1) if g.ndim == 2 else np.repeat(g[:, None], len(GRID), axis=1)
        return torch.from_numpy(np.pad(g, ((1, 0), (1, 0))))

    def _units(self, v: torch.Tensor) -> torch.Tensor:
        """Each unit's predicted ms at ``v``."""
        if not self.index:
            return v.new_zeros(0)
        a = (self._out.per_term(v) / self._full["out"]).clamp(0, 1)
        b = (self._in.per_term(v) / self._full["in"]).clamp(0, 1)  # a unit without an input factor: 1 / 1
        s = self._scale.per_term(v) / self._full["scale"].clamp_min(1e-30)
        if v.device not in self._on:  # moved once per device, not at every step of a search
            self._on[v.device] = (self.tables.to(v.device), self.grid.to(v.device))
        return _bilinear(*self._on[v.device], a, b) * s

    def raw(self, v: torch.Tensor) -> torch.Tensor:
        """The table's prediction in ms, uncalibrated."""
        rest = self._rest(v) / self._rest_full if self._rest_full > 0 else v.new_zeros(())
        return self._units(v).sum() + self.coverage.rest_ms * rest + self.coverage.fixed_ms

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        raw = self.raw(v)
        ms = self.scale * raw + self.offset
        if self.below is not None:
            knee, scale, offset = self.below
            ms = torch.where(raw < knee, scale * raw + offset, ms)
        return ms.clamp_min(self.coverage.fixed_ms)


def _bilinear(tables: torch.Tensor, grid: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``tables[u]`` (over ``grid`` x ``grid``) at ``(a[u], b[u])``, differentiable in ``a`` and ``b``."""
    n = len(grid)
    i = (torch.searchsorted(grid, a.detach(), right=True) - 1).clamp(0, n - 2)
    j = (torch.searchsorted(grid, b.detach(), right=True) - 1).clamp(0, n - 2)
    wa = (a - grid[i]) / (grid[i + 1] - grid[i])
    wb = (b - grid[j]) / (grid[j + 1] - grid[j])
    u = torch.arange(len(a), device=a.device)
    return ((1 - wa) * (1 - wb) * tables[u, i, j] + wa * (1 - wb) * tables[u, i + 1, j]
            + (1 - wa) * wb * tables[u, i, j + 1] + wa * wb * tables[u, i + 1, j + 1])
