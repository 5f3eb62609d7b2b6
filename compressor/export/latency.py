"""onnxruntime CPU latency of several ONNX files, measured side by side.

Repeats interleave the models (A, B, A, B, ...) so that machine noise hits them alike; each
figure is the median of the repeats.  Ratios are what to compare across machines.

Every session runs with intra-op spinning off.  onnxruntime's worker threads otherwise keep
spinning for a while after each run; with several sessions alive, the idle session's spinning
threads take cores from the one being timed (on 2 cores: resnet50 batch 1 measured 37 ms instead
of 20, and every ratio is pulled towards 1).  With spinning off, interleaved timings match timing
each model alone with spinning on.
"""
from __future__ import annotations

import os
import statistics
import time

import numpy as np


def ort_latency(paths: dict[str, str | os.PathLike], input_shape: tuple[int, ...], *,
                batches: tuple[int, ...] = (1, 8), repeats: int = 20, warmup: int = 3,
                threads: int | None = None) -> dict[int, dict[str, float]]:
    """``{batch: {name: median milliseconds}}`` for every ONNX file in ``paths`` (batch-dynamic
    models, or models exported at that batch size).  ``input_shape`` excludes the batch."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
    sessions = {n: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for n, p in paths.items()}
    rng = np.random.default_rng(0)
    result: dict[int, dict[str, float]] = {}
    for batch in batches:
        x = rng.standard_normal((batch, *input_shape)).astype(np.float32)
        feeds = {n: {s.get_inputs()[0].name: x} for n, s in sessions.items()}
        for _ in range(warmup):
            for n, s in sessions.items():
                s.run(None, feeds[n])
        times: dict[str, list[float]] = {n: [] for n in sessions}
        for _ in range(repeats):
            for n, s in sessions.items():
                t0 = time.perf_counter()
                s.run(None, feeds[n])
                times[n].append((time.perf_counter() - t0) * 1e3)
        result[batch] = {n: statistics.median(t) for n, t in times.items()}
    return result
