"""``trace``: the frontend's entry point, DESIGN section 2's first steps.

    trace the model (compressor.space) -> every kind finds its sites (compressor.choices)
    -> check them against the model (compressor.validate: invariants 1 and 2, freezing what breaks)
"""
from __future__ import annotations

import time
from collections.abc import Iterable

import torch
from torch import nn

from . import choices as _builtin_kinds  # noqa: F401 - registers channels and depth
from .space import Space, build_space
from .validate import validate_space


def trace(model: nn.Module, example_inputs: tuple | torch.Tensor, *, kinds: Iterable[str] | None = None,
          validate: bool = True, **options) -> Space:
    """Trace ``model`` once on ``example_inputs`` and return its :class:`Space`.

    ``kinds``: the kinds of choice to find (default: channels and depth); ``options`` reach every
    kind's ``find`` (``candidates``: the op kind's candidate names).  The model runs in eval
    mode (its mode is restored).  Raises :class:`~compressor.space.TraceError` naming the module
    and op when a forward pass cannot be followed.  With ``validate`` (the default) the space is
    checked against the model: what changes the output with every gate at 1, or what slicing
    cannot reproduce, is frozen with the reason (:mod:`compressor.validate`).
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    t0 = time.perf_counter()
    space = build_space(model, example_inputs, kinds=kinds, **options)
    if validate:
        space = validate_space(model, space, example_inputs)
        space.trace_seconds = time.perf_counter() - t0
    return space
