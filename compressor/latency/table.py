"""A per-machine table of unit latencies in onnxruntime, measured once and cached.

Each unit (:mod:`.units`) is timed at every point of ``GRID`` x ``GRID`` kept-width fractions
(``GRID`` alone for whole-group units) as a standalone graph in its own session, with the
deployment's settings: CPU provider, all graph optimisations, the budget's batch and threads.
A point's figure is the median of ``repeats`` runs after ``warmup``, less what an empty graph
costs to run (the session's fixed overhead, which the whole model pays once, not per layer).

The cache is one JSON file per setting (CPU model, onnxruntime version, threads, batch, grid,
repeats): ``$COMPRESSOR_CACHE`` or ``~/.cache/compressor``, under ``latency/``.  Units are keyed
by geometry, so models sharing layers share measurements.  A file that does not parse as that
layout is measured afresh (and rewritten); it is only ever read as JSON numbers.
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..export.ort_timing import timed_runs
from ..machine import cpu_name
from .units import GRID, Unit


@dataclass(frozen=True)
class Settings:
    """What a measurement depends on besides the unit: the cache key."""

    batch: int = 1
    threads: int | None = None
    warmup: int = 2
    repeats: int = 7

    def key(self) -> dict:
        import onnxruntime as ort

        return {"cpu": cpu_name(), "onnxruntime": ort.__version__, "threads": self.threads or os.cpu_count(),
                "batch": self.batch, "optimization": "all", "grid": list(GRID), "repeats": self.repeats}

    def session_options(self):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            opts.intra_op_num_threads = self.threads
        return opts


def cache_dir() -> Path:
    return Path(os.environ.get("COMPRESSOR_CACHE") or Path.home() / ".cache" / "compressor") / "latency"


@dataclass
class LatencyTable:
    """Milliseconds per unit on the grid: ``table[unit]`` is an array of shape ``(len(GRID),) *
    unit.axes`` indexed ``[out, in]``.  ``measured``: units timed by this process (not cached)."""

    settings: Settings
    entries: dict[str, list] = field(default_factory=dict)
    measured: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)  # machine facts measured once (the channel block)

    def __getitem__(self, unit: Unit) -> np.ndarray:
        return np.asarray(self.entries[unit.key()], dtype=np.float64)

    @property
    def path(self) -> Path:
        digest = hashlib.sha256(json.dumps(self.settings.key(), sort_keys=True).encode()).hexdigest()[:16]
        return cache_dir() / f"{digest}.json"

    @classmethod
    def load(cls, settings: Settings) -> LatencyTable:
        """The cached table for ``settings`` (empty when there is none or it is not a table)."""
        table = cls(settings)
        try:
            data = json.loads(table.path.read_text())
            if data.get("key") == settings.key() and isinstance(data.get("units"), dict):
                table.entries = {k: v for k, v in data["units"].items() if _is_grid(v)}
                block = data.get("block")
                if isinstance(block, int) and block in (0, 8, 16, 32):
                    table.extra["block"] = block
        except (OSError, ValueError, AttributeError):
            pass
        return table

    def save(self) -> None:
        """Write the table atomically (a concurrent run reads the old file or the new one)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": self.settings.key(), "units": self.entries, **self.extra}))
        os.replace(tmp, self.path)

    def fill(self, units: list[Unit], *, progress: bool = False) -> LatencyTable:
        """Measure the units the table lacks (and cache them)."""
        todo = list({u.key(): u for u in units if u.key() not in self.entries}.values())
        if not todo:
            return self
        t0 = time.perf_counter()
        overhead = self.overhead()
        for unit in tqdm(todo, desc="latency table", unit="layer", leave=False, disable=not progress):
            self.entries[unit.key()] = self._measure(unit, overhead).tolist()
            self.measured += 1
        self.seconds += time.perf_counter() - t0
        self.save()
        return self

    def block(self) -> int | None:
        """The channel multiple this CPU's convolutions run in (onnxruntime's NCHWc block: 8 with
        AVX2, 16 with AVX-512), measured: the widest step ``m`` in (32, 16, 8) such that a 3x3 conv
        keeping ``65 - m`` of 64 output channels costs what all 64 cost (within 6%; its share of
        them would be 12% less or more).  None when no step shows.  Cached with the table."""
        if "block" in self.extra:
            return self.extra["block"] or None

        def probe(c: int) -> float:
            model, shape = Unit("conv", 64, c, (3, 3), padding=(1, 1), spatial=(56, 56)).graph(1.0, 1.0, 1)
            return min(self.time(model.SerializeToString(), shape) for _ in range(3))

        full = probe(64)
        block = next((m for m in (32, 16, 8) if probe(65 - m) >= 0.94 * full), None)
        self.extra["block"] = block or 0
        self.save()
        return block

    def _measure(self, unit: Unit, overhead: float) -> np.ndarray:
        n = len(GRID)
        out = np.zeros((n,) * unit.axes)
        for i, r_out in enumerate(GRID):
            for j, r_in in enumerate(GRID if unit.axes == 2 else (1.0,)):
                model, shape = unit.graph(r_out, r_in, self.settings.batch)
                t = max(self.time(model.SerializeToString(), shape) - overhead, 0.0)
                out[(i, j) if unit.axes == 2 else (i,)] = t
        return out

    def overhead(self) -> float:
        """Median ms of running an empty graph: what a session run costs however small the model."""
        from onnx import TensorProto, helper

        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
        model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "empty", [x], [y]),
                                  opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return self.time(model.SerializeToString(), [1, 8])

    def time(self, model: bytes | str, shape: list[int]) -> float:
        """Median milliseconds of one run of ``model`` (bytes or a path) on a random input."""
        import onnxruntime as ort

        session = ort.InferenceSession(model, self.settings.session_options(), providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        return statistics.median(timed_runs(session, feed, self.settings.warmup, self.settings.repeats))


def _is_grid(v) -> bool:
    a = np.asarray(v, dtype=object)
    return a.ndim in (1, 2) and all(s == len(GRID) for s in a.shape) and \
        all(isinstance(x, (int, float)) and np.isfinite(x) and x >= 0 for x in a.ravel())
