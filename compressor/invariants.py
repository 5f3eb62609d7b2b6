"""DESIGN §4's invariants 1 and 2 as measurements, with their one tolerance each.  Trace-time
validation (:mod:`compressor.validate`), the coverage tool and the tests all measure through here.

1. Gates at 1 reproduce the model: max |gated - plain| <= ``TOL_GATES_AT_ONE * max(1, scale)``.
2. Slicing reproduces hard gates: max |sliced - gated| / scale <= ``TOL_SLICE``.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import nn

from .decision import Decision
from .errors import one_line
from .gates.outputs import first_output, gated_output
from .space import Space
from .surgery.slice import slice_model

TOL_GATES_AT_ONE = 1e-5
TOL_SLICE = 1e-4


def relative_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over the scale of ``b`` (infinite for different shapes)."""
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-12)


def gates_at_one_diff(model: nn.Module, space: Space, inputs: tuple, reference: torch.Tensor,
                      only: Mapping[str, Collection[str]] | None = None) -> float:
    """Invariant 1: max |gated output - ``reference``| with every gate at 1 (``only``: these gates)."""
    y = gated_output(model, space, None, inputs, only=only)
    return float((y - reference).abs().max()) if y.shape == reference.shape else float("inf")


def gates_at_one_problem(model: nn.Module, space: Space, inputs: tuple, reference: torch.Tensor,
                         only: Mapping[str, Collection[str]] | None = None) -> str | None:
    """Why invariant 1 fails for the gates ``only`` (None when it holds)."""
    try:
        diff = gates_at_one_diff(model, space, inputs, reference, only)
    except Exception as exc:  # noqa: BLE001 - a gate that breaks the forward is a change too
        return one_line(exc)
    if diff <= TOL_GATES_AT_ONE * max(1.0, float(reference.abs().max())):
        return None
    return f"output changes by {diff:.1e} with every gate at 1"


def slice_diff(model: nn.Module, space: Space, decision: Decision, inputs: tuple) -> float:
    """Invariant 2: the sliced model's output against the hard-gated model's, relative."""
    sliced = slice_model(model, space, decision).eval()
    with torch.no_grad():
        ys = first_output(sliced(*inputs))
    return relative_diff(ys, gated_output(model, space, decision, inputs))


def slice_problem(model: nn.Module, space: Space, decision: Decision, inputs: tuple) -> str | None:
    """Why invariant 2 fails for ``decision`` (None when it holds)."""
    try:
        diff = slice_diff(model, space, decision, inputs)
    except Exception as exc:  # noqa: BLE001 - any failure marks the decision as unsafe
        return one_line(exc)
    return None if diff <= TOL_SLICE else f"sliced output differs by {diff:.1e}"
