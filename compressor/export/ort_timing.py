"""onnxruntime CPU latency of several ONNX files, measured side by side.

How it is measured, and why:

* One session is alive at a time, with onnxruntime's default options.  Its worker threads
  spin between runs, as they do in a deployed process.  Two live sessions on the same cores steal
  them from each other (the idle one's threads keep spinning): on 2 cores resnet50 at batch 1
  measured 37 ms with a second session alive vs 20 ms alone.  Turning spinning off is no cure:
  every operator then pays a thread wake-up (mobilenet_v2 batch 1: 3.9 ms instead of 2.9), which
  pulls every ratio towards 1.
* The models take turns in rounds (A's session runs ``repeats / rounds`` times, then B's, ...,
  then the next round; by default a turn is 10 runs), so that machine noise hits them alike; each
  figure is the median of all its runs.  Ratios are what to compare across machines.
* This module imports neither torch nor the package, so that :func:`~compressor.export.latency.ort_latency`
  can run it as a script in a fresh Python process (JSON arguments on stdin, the result on stdout).
"""
from __future__ import annotations

import gc
import json
import math
import os
import statistics
import sys
import time

import numpy as np

TURN = 10  # timed runs of one model before the next takes its turn


def side_by_side(paths: dict[str, str | os.PathLike], input_shape: tuple[int, ...], *,
                batches: tuple[int, ...] = (1, 8), repeats: int = 20, warmup: int = 3, rounds: int | None = None,
                threads: int | None = None) -> dict[int, dict[str, float]]:
    """``{batch: {name: median milliseconds}}`` for every ONNX file in ``paths`` (batch-dynamic
    models, or models exported at that batch size), measured in this process.  ``input_shape`` excludes the batch; each
    model runs ``repeats`` timed times per batch size, spread over ``rounds`` turns (default: a
    turn every :data:`TURN` runs, at least 4)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, *input_shape)).astype(np.float32) for b in batches}
    rounds = max(1, min(rounds or max(4, repeats // TURN), repeats))
    per_round = math.ceil(repeats / rounds)
    times: dict[int, dict[str, list[float]]] = {b: {n: [] for n in paths} for b in batches}
    for _ in range(rounds):
        for name, path in paths.items():
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feed_name = session.get_inputs()[0].name
            for b in batches:
                times[b][name] += timed_runs(session, {feed_name: inputs[b]}, warmup, per_round)
            del session
            gc.collect()  # the next model runs with no other session alive
    return {b: {n: statistics.median(t) for n, t in per_model.items()} for b, per_model in times.items()}


def timed_runs(session, feed: dict[str, np.ndarray], warmup: int, repeats: int) -> list[float]:
    """Milliseconds of each of ``repeats`` runs of an onnxruntime ``session``, after ``warmup``."""
    for _ in range(warmup):
        session.run(None, feed)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feed)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


if __name__ == "__main__":
    args = json.load(sys.stdin)
    json.dump(side_by_side(args.pop("paths"), tuple(args.pop("input_shape")), **args), sys.stdout)
