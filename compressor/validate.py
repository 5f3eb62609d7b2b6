"""Check a traced space against the model itself, and freeze what breaks it (DESIGN §4, 1-2).

Invariant 1: the gated model with every gate at 1 computes what the model computes.  A model's
own code can notice the gates (it inspects ``module._parameters``, re-assigns a weight in a hook,
or its forward cannot be re-traced by fx the way it runs); the weights and block owners whose
gates change the output are found by bisection, their groups frozen and their blocks dropped.

Invariant 2: slicing reproduces the hard-gated model.  The tracer's rules are exact for the ops
they know, but a model's code can hold sizes the tracer cannot see (a head count read from an
attribute that slicing did not refresh, a size computed from another tensor).  A random decision
is sliced and compared with the hard-gated model; on a mismatch the groups and blocks responsible
are found by bisection and frozen with the reason.  No decision over the returned space can then
break the model.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from .decision import Decision
from .errors import one_line
from .export.slice import slice_model
from .gates.outputs import first_output, gated_output
from .space import TraceError

TOLERANCE = 1e-4


def _decision(space, groups, blocks, seed: int, uneven: bool = False):
    """Random units of every group in ``groups`` removed: half of each, or (``uneven``) a
    different share of each (between a fifth and four fifths), so that code assuming two groups
    keep equal widths is caught too."""
    rng = np.random.default_rng(seed)
    kept = {}
    for i, g in enumerate(groups):
        free = np.flatnonzero(~g.pinned)
        share = 0.2 + 0.6 * ((i * 0.618034 + 0.25) % 1.0) if uneven else 0.5  # golden-ratio spacing
        n = min(len(free), max(1, int(round(len(free) * share))))
        kept[g.name] = sorted(set(rng.choice(free, size=n, replace=False).tolist())
                              | set(np.flatnonzero(g.pinned).tolist()))
    return Decision(kept, [b.name for b in blocks])


def _mismatch(model: nn.Module, space, x: tuple, groups, blocks, seed: int, uneven: bool = False) -> str | None:
    decision = _decision(space, groups, blocks, seed, uneven)
    try:
        sliced = slice_model(model, space, decision).eval()
        with torch.no_grad():
            ys = first_output(sliced(*x))
        yg = gated_output(model, space, decision, x)
    except Exception as exc:  # noqa: BLE001 - any failure marks the subset as unsafe
        return one_line(exc)
    if ys.shape != yg.shape:
        return f"output shape {tuple(ys.shape)} != {tuple(yg.shape)}"
    diff = float((ys - yg).abs().max()) / max(float(yg.abs().max()), 1e-12)
    return None if diff <= TOLERANCE else f"sliced output differs by {diff:.1e}"


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


def _reshape_buckets(space, groups) -> dict[str, list]:
    """Groups whose channels pass through a reshape (heads...), keyed by the class of the module
    running it: the usual suspects, and usually alike within a class."""
    classes: dict[int, set[str]] = {}
    for site in space.reshapes:
        units = np.unique(site.atoms[site.atoms >= 0])
        for g in groups:
            if ((units >= g.offset) & (units < g.offset + g.size)).any():
                classes.setdefault(id(g), set()).add(site.module_type)
    buckets: dict[str, list] = {}
    for g in groups:
        if id(g) in classes:
            buckets.setdefault(",".join(sorted(classes[id(g)])), []).append(g)
    return buckets


def _check_bucket(bucket: list, check) -> list[tuple[object, str]]:
    """One check for the whole bucket; if it fails, one for its first member and one for the
    rest: when both fail the whole bucket is frozen (safe, and linear in buckets, not groups)."""
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


def _drop_blocks(space, names: dict[str, str]) -> None:
    for name, why in names.items():
        space.dropped_blocks[name] = why
    if names:
        space.blocks = [b for b in space.blocks if b.name not in names]
        space._cost = None


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


def check_gates_at_one(model: nn.Module, space, example_inputs: tuple) -> None:
    """Invariant 1: freeze the groups gated on every weight, and drop the blocks of every owner,
    whose gates at 1 change the model's output (in place)."""
    with torch.no_grad():
        out = model(*example_inputs)
    y0 = first_output(out)
    if not isinstance(y0, torch.Tensor) or not y0.is_floating_point():
        raise TraceError(f"{type(model).__name__} returns {describe_output(out)}: compressor compares "
                         "outputs before and after slicing, so it needs a floating-point tensor, or a tuple, "
                         "list or dict whose first element is one (detection models return per-image dicts "
                         "whose sizes depend on the values)")
    tol = TOLERANCE * max(1.0, float(y0.abs().max()))

    def changed(params: list, owners: list) -> str | None:
        try:
            y1 = gated_output(model, space, None, example_inputs, params=set(params), owners=set(owners))
        except Exception as exc:  # noqa: BLE001 - a gate that breaks the forward is a change too
            return one_line(exc)
        diff = float((y1 - y0).abs().max()) if y1.shape == y0.shape else float("inf")
        return None if diff <= tol else f"output changes by {diff:.1e} with every gate at 1"

    params = sorted({name for name, _, _ in space.gate_sites} | {name for name, _, _, _ in space.norm_sites})
    owners = sorted({b.owner for b in space.blocks})
    if changed(params, owners) is None:
        return
    for owner, err in _bisect(owners, lambda s: changed([], s)):
        _drop_blocks(space, {b.name: f"its gated owner {owner or '<root>'} changes the model ({err})"
                             for b in space.blocks if b.owner == owner})
    group_of = space.unit_group()
    for param, err in _bisect(params, lambda s: changed(s, [])):
        units = np.concatenate([u[u >= 0] for n, _, u in space.gate_sites if n == param]
                               + [u[u >= 0] for n, _, u, _ in space.norm_sites if n == param])
        for gi in np.unique(group_of[units]).tolist():
            g = space.groups[gi]
            if g.prunable:
                g.frozen = f"gating {param} changes the model ({err})"


def validate_space(model: nn.Module, space, example_inputs: tuple, *, seed: int = 0) -> None:
    """Check invariants 1 and 2 on ``example_inputs``; freeze every group, and drop every block,
    that breaks them (in place)."""
    was_training = model.training
    model.eval()
    try:
        check_gates_at_one(model, space, example_inputs)
        blocks = list(space.blocks)
        # Groups and blocks are checked apart: a removed block would hide its groups' faults.
        # Groups whose channels pass through a reshape (heads) are the usual suspects: they are
        # tried one by one, the rest by bisection.  Two decisions: half of every group, then a
        # different share per group (hidden equal-width assumptions pass the first).
        for uneven in (False, True):
            groups = [g for g in space.groups if g.prunable and (~g.pinned).sum() >= 2]
            check = lambda s, u=uneven: _mismatch(model, space, example_inputs, s, [], seed, u)  # noqa: E731
            if check(groups) is None:
                continue
            buckets = _reshape_buckets(space, groups)
            bad = []
            for bucket in buckets.values():
                bad += _check_bucket(bucket, check)
            in_buckets = {id(g) for b in buckets.values() for g in b}
            bad += _bisect([g for g in groups if id(g) not in in_buckets], check)
            for g, err in bad:
                g.frozen = f"slicing does not reproduce the gated model ({err})"
        bad_blocks = _bisect(blocks, lambda s: _mismatch(model, space, example_inputs, [], s, seed))
        # (Each group and each block is checked; combining them removes only more of the same
        # parameters, so the two checks cover every decision.)
        _drop_blocks(space, {b.name: f"removing it does not reproduce the gated model ({err})"
                             for b, err in bad_blocks})
    finally:
        model.train(was_training)
