"""onnxruntime CPU latency of a model against its original, each measurement in a fresh process
(how: :mod:`compressor.export.ort_timing`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from . import ort_timing
from .onnx import export_onnx
from .ort_timing import TURN, side_by_side, timed_runs

# the timing module as a script, with neither the working directory nor its own on the path
_RUN_SCRIPT = "import runpy, sys; sys.path.pop(0); runpy.run_path(sys.argv[1], run_name='__main__')"

__all__ = ["TURN", "latency_vs_original", "ort_latency", "side_by_side", "timed_runs"]


def ort_latency(paths: dict[str, str | os.PathLike], input_shape: tuple[int, ...], *,
                batches: tuple[int, ...] = (1, 8), repeats: int = 20, warmup: int = 3, rounds: int | None = None,
                threads: int | None = None) -> dict[int, dict[str, float]]:
    """:func:`~compressor.export.ort_timing.side_by_side` run in a fresh Python process: a process
    that has trained a model is not a deployed one (after a short mobilenet_v2 run at 32 px the
    original measured 0.49 ms in the training process and 0.44 ms in a fresh one, moving the
    compressed model's ratio by 9%)."""
    args = {"paths": {k: str(v) for k, v in paths.items()}, "input_shape": list(input_shape),
            "batches": list(batches), "repeats": repeats, "warmup": warmup, "rounds": rounds, "threads": threads}
    done = subprocess.run([sys.executable, "-c", _RUN_SCRIPT, ort_timing.__file__], input=json.dumps(args),
                          capture_output=True, text=True, check=False)
    if done.returncode:
        lines = done.stderr.strip().splitlines() or ["no error output"]
        raise RuntimeError(f"onnxruntime timing of {', '.join(args['paths'].values())} failed: {lines[-1]}")
    return {int(b): v for b, v in json.loads(done.stdout).items()}


def latency_vs_original(original: nn.Module, example: torch.Tensor, files: dict[str, str | os.PathLike], *,
                        opset: int = 17, **timing) -> dict[int, dict[str, float]]:
    """:func:`ort_latency` of ``original`` (exported here, batch-dynamic; ``"original"`` in the
    result) and the ONNX ``files``, side by side; ``timing``: ort_latency's keywords."""
    with tempfile.TemporaryDirectory(prefix="compressor-latency-") as tmp:
        path = Path(tmp) / "original.onnx"
        export_onnx(original.eval(), path, example, opset=opset, dynamic_batch=True, check=False)
        return ort_latency({"original": path, **files}, tuple(example.shape[1:]), **timing)
