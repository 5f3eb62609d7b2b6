"""onnxruntime CPU latency of several ONNX files, measured side by side.

How it is measured, and why:

* One session is alive at a time, with onnxruntime's default options.  Its worker threads
  spin between runs, as they do in a deployed process.  Two live sessions on the same cores steal
  them from each other (the idle one's threads keep spinning): on 2 cores resnet50 at batch 1
  measured 37 ms with a second session alive vs 20 ms alone.  Turning spinning off is no cure:
  every operator then pays a thread wake-up (mobilenet_v2 batch 1: 3.9 ms instead of 2.9), which
  pulls every ratio towards 1.
* The models take turns in rounds (A's session runs ``repeats / rounds`` times, then B's, ...,
  then the next round), so that machine noise hits them alike; each figure is the median of all
  its runs.  Ratios are what to compare across machines.
"""
from __future__ import annotations

import gc
import math
import os
import statistics
import time

import numpy as np


def ort_latency(paths: dict[str, str | os.PathLike], input_shape: tuple[int, ...], *,
                batches: tuple[int, ...] = (1, 8), repeats: int = 20, warmup: int = 3, rounds: int = 4,
                threads: int | None = None) -> dict[int, dict[str, float]]:
    """``{batch: {name: median milliseconds}}`` for every ONNX file in ``paths`` (batch-dynamic
    models, or models exported at that batch size).  ``input_shape`` excludes the batch; each
    model runs ``repeats`` timed times per batch size, spread over ``rounds`` turns."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, *input_shape)).astype(np.float32) for b in batches}
    rounds = max(1, min(rounds, repeats))
    per_round = math.ceil(repeats / rounds)
    times: dict[int, dict[str, list[float]]] = {b: {n: [] for n in paths} for b in batches}
    for _ in range(rounds):
        for name, path in paths.items():
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feed_name = session.get_inputs()[0].name
            for b in batches:
                feed = {feed_name: inputs[b]}
                for _ in range(warmup):
                    session.run(None, feed)
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    session.run(None, feed)
                    times[b][name].append((time.perf_counter() - t0) * 1e3)
            del session
            gc.collect()  # the next model runs with no other session alive
    return {b: {n: statistics.median(t) for n, t in per_model.items()} for b, per_model in times.items()}
