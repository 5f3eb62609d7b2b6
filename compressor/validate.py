"""Check a traced space against the model itself, and freeze what breaks it (DESIGN §4, 1-2).

Invariant 1: the gated model with every gate at 1 computes what the model computes.  A model's
own code can notice the gates (it inspects ``module._parameters``, re-assigns a weight in a hook,
or its forward cannot be re-traced by fx the way it runs); the gate items whose gates change the
output are found by bisection, kind by kind, and their sites frozen.

Invariant 2: slicing reproduces the hard-gated model.  The tracer's rules are exact for the ops
they know, but a model's code can hold sizes the tracer cannot see (a head count read from an
attribute that slicing did not refresh, a size computed from another tensor).  For every kind, a
random decision over its sites is sliced and compared with the hard-gated model; on a mismatch the
sites responsible are found by bisection and frozen with the reason.  No decision over the
returned space can then break the model.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from .decision import Decision
from .gates.outputs import first_output
from .invariants import gates_at_one_problem, slice_problem
from .space import Space, TraceError
from .space.kinds import get_kind

def _even(i: int) -> float:  # noqa: ARG001
    return 0.5


def _uneven(i: int) -> float:
    """A different share per site, between a fifth and four fifths (golden-ratio spacing), so that
    code assuming two sites keep equal widths is caught too."""
    return 0.2 + 0.6 * ((i * 0.618034 + 0.25) % 1.0)


def _bisect(items: list, bad: Callable[[list], str | None]) -> list[tuple[object, str]]:
    """Items whose presence alone makes ``bad`` report an error (assumes no interactions)."""
    if not items:
        return []
    err = bad(items)
    if err is None:
        return []
    if len(items) == 1:
        return [(items[0], err)]
    mid = len(items) // 2
    found = _bisect(items[:mid], bad) + _bisect(items[mid:], bad)
    return found or [(it, err) for it in items]  # only bad together: give up on all of them


def _check_bucket(bucket: list, check) -> list[tuple[object, str]]:
    """One check for the whole bucket; if it fails, one for its first member and one for the
    rest: when both fail the whole bucket is frozen (safe, and linear in buckets, not sites)."""
    err = check(bucket)
    if err is None:
        return []
    if len(bucket) == 1:
        return [(bucket[0], err)]
    first = check(bucket[:1])
    rest = check(bucket[1:])
    if first is not None and rest is not None:
        return [(g, first) for g in bucket]
    return ([(bucket[0], first)] if first else []) + (_bisect(bucket[1:], check) if rest else [])


def describe_output(out, depth: int = 0) -> str:
    """A model output's structure in a few words: ``list[dict[str, Tensor]]``."""
    if isinstance(out, torch.Tensor):
        return f"Tensor({out.dtype})" if not out.is_floating_point() else "Tensor"
    if depth < 3 and isinstance(out, dict) and out:
        key, value = next(iter(out.items()))
        return f"dict[{type(key).__name__}, {describe_output(value, depth + 1)}]"
    if depth < 3 and isinstance(out, (list, tuple)) and out:
        return f"{type(out).__name__}[{describe_output(out[0], depth + 1)}]"
    return type(out).__name__


def _reference_output(model: nn.Module, inputs: tuple) -> torch.Tensor:
    with torch.no_grad():
        out = model(*inputs)
    y0 = first_output(out)
    if not isinstance(y0, torch.Tensor) or not y0.is_floating_point():
        raise TraceError(f"{type(model).__name__} returns {describe_output(out)}: compressor compares "
                         "outputs before and after slicing, so it needs a floating-point tensor, or a tuple, "
                         "list or dict whose first element is one (detection models return per-image dicts "
                         "whose sizes depend on the values)")
    return y0


def _freeze(space: Space, kind: str, reasons: dict[str, str]) -> Space:
    return space.replace(**{kind: get_kind(kind).freeze(space[kind], reasons)}) if reasons else space


def check_gates_at_one(model: nn.Module, space: Space, inputs: tuple) -> Space:
    """Invariant 1: the space with every site frozen whose gates at 1 change the model's output."""
    y0 = _reference_output(model, inputs)
    items = {kind: get_kind(kind).gate_items(space[kind]) for kind in space}
    if gates_at_one_problem(model, space, inputs, y0, items) is None:
        return space
    for kind in space:
        kd = get_kind(kind)
        bad = _bisect(items[kind], lambda s, k=kind: gates_at_one_problem(model, space, inputs, y0, {k: s}))
        reasons = {site: f"gating {item or '<root>'} changes the model ({err})"
                   for item, err in bad for site in kd.sites_of_gate(space[kind], item)}
        space = _freeze(space, kind, {s: r for s, r in reasons.items() if s not in kd.frozen(space[kind])})
    return space


def check_slicing(model: nn.Module, space: Space, inputs: tuple, seed: int = 0) -> Space:
    """Invariant 2: the space with every site frozen whose slicing does not reproduce the gated
    model.  Kinds are checked apart (a removed block would hide its groups' faults); per kind, a
    decision over half of every site, then a different share per site (hidden equal-width
    assumptions pass the first); suspects first, the rest by bisection."""
    for kind in list(space):
        kd = get_kind(kind)
        items = kd.checkable(space[kind])
        passes: list[Callable[[int], float]] = [_even]
        if kd.sample(space[kind], items, np.random.default_rng(seed), _uneven) != \
                kd.sample(space[kind], items, np.random.default_rng(seed), _even):
            passes.append(_uneven)  # only where the share matters
        for share in passes:
            items = kd.checkable(space[kind])

            def check(subset: list, share=share, kind=kind, space=space) -> str | None:
                payload = get_kind(kind).sample(space[kind], subset, np.random.default_rng(seed), share)
                return slice_problem(model, space, Decision({kind: payload}), inputs)

            if check(items) is None:
                continue
            buckets = kd.suspects(space[kind], items)
            bad = [found for bucket in buckets for found in _check_bucket(bucket, check)]
            in_buckets = {s for b in buckets for s in b}
            bad += _bisect([s for s in items if s not in in_buckets], check)
            space = _freeze(space, kind, {s: f"slicing does not reproduce the gated model ({err})" for s, err in bad})
    return space


def validate_space(model: nn.Module, space: Space, example_inputs: tuple, *, seed: int = 0) -> Space:
    """Check invariants 1 and 2 on ``example_inputs``; return the space with every site frozen
    that breaks them (the model is left as it was)."""
    was_training = model.training
    model.eval()
    try:
        space = check_gates_at_one(model, space, example_inputs)
        return check_slicing(model, space, example_inputs, seed)
    finally:
        model.train(was_training)
