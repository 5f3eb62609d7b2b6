"""The torch-function level of the trace: which function is running, for what dispatch alone
cannot tell (an op that decomposes before dispatch, a normalisation recognised by its call)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch.overrides import TorchFunctionMode

from .standardise import match as match_standardisation

if TYPE_CHECKING:
    from .tracer import Trace


class FunctionMode(TorchFunctionMode):
    """Remembers which torch-level function is running, for ops that decompose before dispatch
    (``adaptive_avg_pool2d`` to 1x1 reaches dispatch as ``mean``)."""

    def __init__(self, trace: Trace) -> None:
        super().__init__()
        self.trace = trace

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        tr = self.trace
        site = _rms_norm_site(tr, name, args, kwargs)
        std = match_standardisation(tr, func, args, kwargs)
        tr.functions.append(name)
        tr.norm_depth += site is not None
        tr.quiet += std is not None
        try:
            out = func(*args, **kwargs)
        finally:
            tr.functions.pop()
            tr.norm_depth -= site is not None
            tr.quiet -= std is not None
        if std is not None:
            std(out)
        if site is not None:
            x, weight = site
            tr.norm_site(weight, "rms_norm", tr.vector(tr.label(x), x.dim() - 1, name))
        return out


def _rms_norm_site(tr: Trace, name: str, args: tuple, kwargs: dict) -> tuple | None:
    """``(input, weight)`` of an ``rms_norm`` call over the last dim with a traced weight: it
    decomposes before dispatch, so its mean over channels is not a join (see ``norm_depth``)."""
    if name != "rms_norm" or not args:
        return None
    shape = kwargs.get("normalized_shape", args[1] if len(args) > 1 else None)
    weight = kwargs.get("weight", args[2] if len(args) > 2 else None)
    if shape is None or len(shape) != 1 or tr.param_name(weight) is None:
        return None
    return args[0], weight
