"""Weight standardisation, recognised by the tracer as one step.

timm's ``StdConv2d`` and ``ScaledStdConv2d`` (NF nets, BiT/ResNetV2, ViT hybrids) compute their
weight in the forward::

    w = F.batch_norm(P.reshape(1, out, -1), None, None, gain, training=True).reshape_as(P)

Followed op by op, the reshape labels every element of ``P`` as a free-standing parameter, the
batch norm ties each of its rows, and the convolution then sees a computed weight and ties every
channel it touches.  Seen as one step, ``w`` is the parameter ``P`` with each output row
normalised over its inputs: the convolution lays ``P`` out as it would a plain weight, and the
gates compute each row's statistics over the kept inputs only (:mod:`compressor.gates.standardised`),
which is what the sliced model computes.  :func:`match` recognises the three calls at the
torch-function level (their aten ops are hidden from the label rules); a tensor of the chain used
in any other way falls back to labels that tie it whole (:func:`fallback_label`), which is safe.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .tracer import Trace

ROWS, NORMED, WEIGHT = "rows", "normed", "weight"


@dataclass
class StandardisedStep:
    """A tensor of the chain: ``param`` reshaped to rows (``rows``), normalised (``normed``), or
    back in the parameter's shape (``weight``, what the convolution receives)."""

    param: torch.Tensor
    stage: str
    gain: torch.Tensor | None = None
    bias: torch.Tensor | None = None


def match(tr: Trace, func: Callable, args: tuple, kwargs: dict) -> Callable[[Any], None] | None:
    """If ``func(*args, **kwargs)`` is a step of a weight standardisation, a function recording
    its output (to call after running it with the label rules off); otherwise None."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor):
        return None
    name = getattr(func, "__name__", "")
    prev = tr.standardised.get(x)
    if name in ("reshape", "view") and prev is None and tr.param_name(x) is not None \
            and x.is_floating_point() and x.dim() >= 2:
        shape = _shape(args[1:], kwargs)
        rows = x.shape[0]
        if len(shape) == 3 and shape[0] == 1 and shape[1] == rows and shape[2] in (-1, x.numel() // max(rows, 1)):
            return _record(tr, StandardisedStep(x, ROWS))
    if prev is None:
        return None
    if func is F.batch_norm and prev.stage == ROWS:
        running = [_arg(args, kwargs, i, k) for i, k in ((1, "running_mean"), (2, "running_var"))]
        if running == [None, None] and bool(_arg(args, kwargs, 5, "training", False)):
            return _record(tr, StandardisedStep(prev.param, NORMED, _arg(args, kwargs, 3, "weight"),
                                                _arg(args, kwargs, 4, "bias")))
    if prev.stage == NORMED:
        if name in ("reshape_as", "view_as") and len(args) > 1 and isinstance(args[1], torch.Tensor):
            shape = tuple(args[1].shape)
        elif name in ("reshape", "view"):
            shape = _shape(args[1:], kwargs)
        else:
            return None
        if tuple(shape) == tuple(prev.param.shape):
            return _record(tr, StandardisedStep(prev.param, WEIGHT, prev.gain, prev.bias))
    return None


def fallback_label(tr: Trace, step: StandardisedStep, t: torch.Tensor) -> torch.Tensor:
    """Labels of a tensor of the chain that reached an op other than the next step: the rows keep
    the parameter's own labels; after the normalisation, the parameter and its gain are one unit."""
    if step.stage == ROWS:
        return tr.label(step.param).reshape(tuple(t.shape))
    parts = [tr.label(p) for p in (step.param, step.gain, step.bias) if isinstance(p, torch.Tensor)]
    parts = [p for p in parts if (p >= 0).any()]
    root = tr.merge_all(parts, "weight standardisation") if parts else -1
    return torch.full(tuple(t.shape), root, dtype=torch.int64)


def _record(tr: Trace, step: StandardisedStep) -> Callable[[Any], None]:
    def record(out: Any) -> None:
        if isinstance(out, torch.Tensor):
            tr.standardised[out] = step
    return record


def _arg(args: tuple, kwargs: dict, i: int, key: str, default: Any = None) -> Any:
    return args[i] if len(args) > i else kwargs.get(key, default)


def _shape(rest: tuple, kwargs: dict) -> tuple:
    if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)):
        rest = tuple(rest[0])
    elif not rest:
        rest = tuple(kwargs.get("shape", kwargs.get("size", ())))
    return tuple(int(s) if isinstance(s, int) else -2 for s in rest)
