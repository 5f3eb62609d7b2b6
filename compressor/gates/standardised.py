"""Gates of a weight standardised in the forward, with statistics over kept inputs.

A weight-standardised convolution (timm's ``StdConv2d``/``ScaledStdConv2d``) normalises each
output row of its weight over the row's inputs before convolving.  The sliced model computes those
statistics over the inputs it keeps, so for slicing to reproduce the gated model (invariant 2)
the gated model must too; masking the weight first (:class:`~.modules.ChannelMask`) would count
the removed inputs as zeros, and a scale on a whole row would cancel out.

:class:`StandardisedMask` hands the weight out as a :class:`StandardisedWeight` that carries, per
element, the gate product ``scale`` (the factor a :class:`~.modules.ChannelMask` would apply) and
the statistics weight ``stat`` (the same product without the row's own gate).  Reshapes keep them
aligned; ``F.batch_norm`` in training mode on it (how the module standardises) computes::

    mean = sum_i s_i w_i / sum_i s_i     var = sum_i s_i (w_i - mean)^2 / sum_i s_i
    out  = scale * ((w - mean) / sqrt(var + eps) * gain + bias)

With hard 0/1 gates these are the statistics of the kept inputs and the removed entries are 0,
exactly the sliced weight in place.  Soft gates (an scs draw, a tas expected width) weigh each
input in the statistics by its gate and scale it after.  With every gate at 1 the
parametrization returns the weight itself.  Anything else done with the weight sees the plain
parameter (the tracer only marks weights it saw standardised, and validation checks the result).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .modules import ChannelMask

_LOW = (torch.float16, torch.bfloat16)
_RESHAPES = {torch.Tensor.reshape, torch.Tensor.view, torch.reshape, torch.Tensor.reshape_as, torch.Tensor.view_as}


class StandardisedWeight(torch.Tensor):
    """A weight carrying per-element ``scale`` and ``stat`` (see the module docstring)."""

    scale: torch.Tensor
    stat: torch.Tensor

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        first = args[0] if args else None
        if isinstance(first, StandardisedWeight):
            if func in _RESHAPES:
                return _reshape(func, first, args, kwargs)
            if func is F.batch_norm:
                return _standardise(*args, **kwargs)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


class StandardisedMask(ChannelMask):
    """Parametrization of a standardised weight: gates along its dims as :class:`ChannelMask`
    lays them out, applied through the standardisation (rows are dim 0)."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self._values[0].is_ones("channels"):
            return weight
        scale = stat = weight.new_ones(())
        for i, d in enumerate(self.dims):
            f = self.factor(i, weight, d, self.ndim)
            scale = scale * f
            if d != 0:
                stat = stat * f
        out = weight.as_subclass(StandardisedWeight)
        out.scale = scale.expand(weight.shape)
        out.stat = stat.expand(weight.shape)
        return out


def _reshape(func, w: StandardisedWeight, args: tuple, kwargs: dict) -> StandardisedWeight:
    with torch._C.DisableTorchFunctionSubclass():
        data = func(*args, **kwargs)
        scale, stat = w.scale.reshape(data.shape), w.stat.reshape(data.shape)
    out = data.as_subclass(StandardisedWeight)
    out.scale, out.stat = scale, stat
    return out


def _standardise(input, running_mean=None, running_var=None, weight=None, bias=None, training=False,
                 momentum=0.1, eps=1e-5):
    w, scale, stat = _plain(input), input.scale, input.stat
    if not training or running_mean is not None or running_var is not None:  # not a standardisation
        return F.batch_norm(w * scale, running_mean, running_var, weight, bias, training, momentum, eps)
    inner = torch.float32 if w.dtype in _LOW else w.dtype
    x, s = w.to(inner), stat.to(inner)
    dims = tuple(d for d in range(x.dim()) if d != 1)
    count = s.sum(dims, keepdim=True).clamp_min(1e-12)
    mean = (x * s).sum(dims, keepdim=True) / count
    centred = x - mean
    var = (centred * centred * s).sum(dims, keepdim=True) / count
    y = centred * torch.rsqrt(var + eps)
    shape = [1] * x.dim()
    shape[1] = -1
    if weight is not None:
        y = y * weight.to(inner).view(shape)
    if bias is not None:
        y = y + bias.to(inner).view(shape)
    return (y * scale.to(inner)).to(w.dtype)


def _plain(t: torch.Tensor) -> torch.Tensor:
    with torch._C.DisableTorchFunctionSubclass():
        return t.as_subclass(torch.Tensor)
