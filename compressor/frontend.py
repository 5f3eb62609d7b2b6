"""``trace``: the frontend's entry point, DESIGN section 2's first two steps.

    build the space (compressor.space: groups, blocks, cost) -> check it against the model
    (compressor.validate: invariants 1 and 2, freezing what breaks them)

The space layer only builds; checking needs gates and slicing, which sit above it, so the two
meet here and every import points down the data flow.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from .space import Space, build_space
from .validate import validate_space


def trace(model: nn.Module, example_inputs: tuple | torch.Tensor, *, blocks: bool = True,
          validate: bool = True) -> Space:
    """Trace ``model`` once on ``example_inputs`` and return its :class:`Space`.

    The model runs in eval mode (its mode is restored).  Raises
    :class:`~compressor.space.TraceError` naming the module and op when a forward pass cannot be
    followed.  With ``validate`` (the default) the space is checked against the model: what
    changes the output with every gate at 1, or what slicing cannot reproduce, is frozen or
    dropped with the reason (:mod:`compressor.validate`).
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    t0 = time.perf_counter()
    space = build_space(model, example_inputs, blocks=blocks)
    if validate:
        validate_space(model, space, example_inputs)
        space.trace_seconds = time.perf_counter() - t0
    return space
