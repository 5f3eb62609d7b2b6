"""The round-trip checks of DESIGN §4 (invariants 1-5) on one model, as plain numbers.
(Invariants 1 and 2 are measured by :mod:`compressor.invariants`, as validation measures them.)"""
from __future__ import annotations

import ctypes
import gc
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .budget import decision_for_budget
from .errors import one_line
from .export import export_onnx, load_compressed, save_compressed
from .export.flops import fvcore_flops
from .frontend import trace
from .gates.outputs import first_output
from .invariants import TOL_GATES_AT_ONE, TOL_SLICE, gates_at_one_diff, slice_diff
from .space import Space, get_kind
from .surgery.slice import slice_model
from .zoo import create_model_for_size, example_input

TOL_FLOPS = 0.01
ROUND_TRIP_KINDS = ("channels", "depth", "kernel")  # what the coverage run checks on every model
TOL_ONNX = 1e-4
TOL_GROW = 1e-4


def _rss_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key))


def peak_memory(fn: Callable[[], Any]) -> tuple[Any, float | None]:
    """``fn()`` and the peak resident set during it above the resident set before it, in MB
    (freed memory is returned to the system first; ``VmHWM`` is reset through
    ``/proc/self/clear_refs``).  The peak is None where that is not available (not Linux)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        before = _rss_mb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return fn(), None
    out = fn()
    return out, _rss_mb("VmHWM") - before


def randomise_zero_weights(model: nn.Module, seed: int) -> None:
    """Weights initialised to zero (torchvision ViT heads, zero-init residual branches) make every
    output comparison vacuous: give them small random values so the checks can fail."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def check_round_trip(model: str | nn.Module, *, size: int | None = None, target: float = 0.5,
                     seed: int = 0, source: str | None = None, kinds: list[str] | None = None) -> dict:
    """Trace (channels, depth and kernel unless ``kinds`` says), decide (random, about
    ``target`` of the FLOPs), slice and check invariants 1-5.

    Returns a dict of measurements with ``status`` "pass" or "fail" (and ``error`` naming the
    first failed invariant).
    """
    name = model if isinstance(model, str) else (source or type(model).__name__)
    kwargs: dict = {}
    if isinstance(model, str):
        m, kwargs = create_model_for_size(model, size)
    else:
        m = model
    m = m.eval()
    randomise_zero_weights(m, seed)
    x = example_input(name, m, batch=2, size=size) if isinstance(model, str) else \
        torch.randn(2, 3, size or 224, size or 224)
    space, res = _traced(m, x[:1], kinds or ROUND_TRIP_KINDS)
    decision = decision_for_budget(space, target, seed=seed)
    full = float(space.cost.flops())
    res["flops_ratio"] = round(decision.flops(space) / full, 4)
    t0 = time.perf_counter()
    sliced = slice_model(m, space, decision).eval()
    res["slice_s"] = round(time.perf_counter() - t0, 2)
    with torch.no_grad():
        y0 = first_output(m(x))
        ys = first_output(sliced(x))
    res["output_scale"] = float(ys.abs().max())
    res["inv1"] = gates_at_one_diff(m, space, (x,), y0)
    res["inv2"] = slice_diff(m, space, decision, (x,))
    fv = fvcore_flops(sliced, x[:1])
    res["flops_vs_fvcore"] = round(decision.flops(space) / fv, 5) if fv else None
    res["params_exact"] = int(round(decision.params(space))) == sum(p.numel() for p in sliced.parameters())
    res.update(_exported(sliced, x, ys, decision, model if isinstance(model, str) else None, kwargs))
    res["grow"] = check_growth(m, space, x)
    res["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    failures = _failures(res, float(y0.abs().max()))
    res["status"] = "fail" if failures else "pass"
    if failures:
        res["error"] = "; ".join(failures)
    return res


def _traced(m: nn.Module, x: torch.Tensor, kinds: list[str]) -> tuple[Space, dict]:
    """The space of ``m`` and the trace's facts: its time and peak memory against a plain forward
    pass (weights included), and what it found."""
    res: dict = {"params": sum(p.numel() for p in m.parameters())}
    weights_mb = sum(p.numel() * p.element_size() for p in m.parameters()) / 2**20
    with torch.no_grad():
        _, plain_mb = peak_memory(lambda: m(x))
    t0 = time.perf_counter()
    space, trace_mb = peak_memory(lambda: trace(m, x, kinds=kinds))
    res["trace_s"] = round(time.perf_counter() - t0, 2)
    if plain_mb is not None:
        res["trace_mem_x"] = round((weights_mb + trace_mb) / (weights_mb + plain_mb), 2)
        res["trace_peak_mb"] = round(weights_mb + trace_mb)
    res["groups"] = len(space["channels"].groups)
    res["prunable"] = sum(g.prunable for g in space["channels"].groups)
    res["blocks"] = len(space["depth"].blocks) if "depth" in space else 0
    res["kernel_sites"] = len(get_kind("kernel").checkable(space["kernel"])) if "kernel" in space else 0
    return space, res


def _exported(sliced: nn.Module, x: torch.Tensor, ys: torch.Tensor, decision, source: str | None,
              kwargs: dict) -> dict:
    """Invariant 4 (ONNX against PyTorch) and, for a zoo model (``source``), invariant 5 (saved
    and loaded again against ``ys``, the sliced model's output)."""
    res: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        onnx = export_onnx(sliced, Path(tmp) / "model.onnx", x, check=True, atol=float("inf"))
        res["inv4"], res["onnx_exporter"] = onnx.max_rel_diff, onnx.exporter
        if source is not None:
            save_compressed(sliced, Path(tmp) / "saved", source=source, input_shape=tuple(x[:1].shape),
                            decision=decision, source_kwargs=kwargs)
            loaded = load_compressed(Path(tmp) / "saved")
            with torch.no_grad():
                res["inv5"] = float((first_output(loaded(x)) - ys).abs().max())
    return res


def _failures(res: dict, scale: float) -> list[str]:
    """Which invariants a round trip's measurements break (empty when none)."""
    failures = []
    if res["output_scale"] == 0.0:
        failures.append("output is identically zero: the comparisons would be vacuous")
    if res["flops_ratio"] > 0.55:
        failures.append(f"FLOPs ratio {res['flops_ratio']} > 0.55")
    if res["inv1"] > TOL_GATES_AT_ONE * max(1.0, scale):
        failures.append(f"inv1 gates-at-one diff {res['inv1']:.1e}")
    if res["inv2"] > TOL_SLICE:
        failures.append(f"inv2 sliced vs gated {res['inv2']:.1e}")
    if res["flops_vs_fvcore"] is None or abs(res["flops_vs_fvcore"] - 1) > TOL_FLOPS:
        failures.append(f"inv3 cost model / fvcore = {res['flops_vs_fvcore']}")
    if not res["params_exact"]:
        failures.append("inv3 params not exact")
    if res["inv4"] > TOL_ONNX:
        failures.append(f"inv4 onnx diff {res['inv4']:.1e}")
    if res.get("inv5", 0.0) != 0.0:
        failures.append(f"inv5 save/load diff {res['inv5']:.1e}")
    return failures


def check_growth(model: nn.Module, space, x: torch.Tensor, seed: int = 0) -> str:
    """The widening invariant on ``model``: two different half-width seeds grown with zero
    off-diagonal blocks give the sum of their outputs.  ``"exact"``, or why not (the groups both
    seeds share, or the measured gap)."""
    from .surgery.widen import (
        GrowError,
        first_divergence,
        grow_model,
        growth_gap,
        seed_model,
        shared_groups,
        split_halves,
    )

    try:
        halves = split_halves(space)
        seed_a = seed_model(model, space, halves).eval()
        seed_b = seed_model(model, space, halves).eval()
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # B differs from A by a positive factor per element (variances stay > 0)
            for t in list(seed_b.parameters()) + list(seed_b.buffers()):
                if t.is_floating_point():
                    t.mul_(torch.exp(0.3 * torch.randn(t.shape, generator=g)).to(t.dtype))
        gap = growth_gap(model, space, halves, seed_a, seed_b, x)
    except GrowError as e:
        return f"cannot grow: {e}"
    except Exception as e:  # noqa: BLE001 - a widening bug is this column's finding, not the round trip's
        return f"growth failed: {one_line(e)}"
    if gap <= TOL_GROW:
        return "exact"
    shared = shared_groups(space, halves)
    if shared:
        why = "; ".join(f"'{k}' shared ({v})" for k, v in list(shared.items())[:2])
    else:
        grown = grow_model(model, space, halves, seed_a, seed_b)
        why = first_divergence(grown, seed_a, seed_b, x) or "every module's output is exact, the model's is not"
    return f"not the sum of the seeds (gap {gap:.1e}): {why}"
