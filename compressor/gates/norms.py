"""Normalisations over channels whose statistics count kept channels only.

A LayerNorm, GroupNorm or RMSNorm mixes every channel of a group into its statistics, so in the
sliced model the statistics change with the channels that are gone.  For slicing to reproduce
the gated model (invariant 2), the gated model computes them the same way.  :class:`NormMask`
parametrizes the norm's affine weight: it hands the weight out as a :class:`MaskedNormWeight`,
a tensor subclass that catches the functional norm receiving it (``F.layer_norm``,
``F.group_norm``, ``F.rms_norm``: whatever module or code calls them, timm's channels-last
``LayerNorm2d`` included) and computes it with a weight ``g_c`` per channel::

    mean = sum_c g_c x_c / sum_c g_c        var = sum_c g_c (x_c - mean)^2 / sum_c g_c

With hard 0/1 gates these are the statistics over the kept channels, exactly those of the sliced
model.  Soft gates (an scs draw, a tas expected width) weigh each channel by its gate value; the
outputs of removed channels are computed but no consumer reads them (their columns are gated).
Every other function sees a plain tensor, and with every gate at 1 the parametrization returns
the weight itself, so the model is unchanged.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .modules import GateValues

_LOW = (torch.float16, torch.bfloat16)


class MaskedNormWeight(torch.Tensor):
    """A norm weight carrying ``gate`` (one value per channel) for the norm that receives it."""

    gate: torch.Tensor
    groups: int

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        impl = _NORMS.get(func)
        if impl is not None:
            return impl(*args, **kwargs)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


class NormMask(nn.Module):
    """Parametrization of a norm's weight: the statistics weigh channel c by the value of its unit
    (``index[c]``; ``num_units`` means no unit, weight 1)."""

    def __init__(self, values: GateValues, index: torch.Tensor, groups: int = 1) -> None:
        super().__init__()
        self._values = [values]
        self.register_buffer("index", index.long(), persistent=False)
        self.groups = groups

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        values = self._values[0]
        if values.is_ones("channels"):
            return weight
        units = values["channels"].to(device=weight.device, dtype=torch.float32)
        gate = torch.cat([units, units.new_ones(1)])[self.index]
        out = weight.as_subclass(MaskedNormWeight)
        out.gate = gate
        out.groups = self.groups
        return out


def _unwrap(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gate = weight.gate
    with torch._C.DisableTorchFunctionSubclass():
        return weight.as_subclass(torch.Tensor), gate


def _compute_dtype(x: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(dtype to compute in, dtype to return): float32 inside for half inputs, as the native
    kernels accumulate; the input's dtype out (under CUDA autocast the native norm would return
    float32; every consumer casts its input, so only the dtype of this tensor differs)."""
    return (torch.float32 if x.dtype in _LOW else x.dtype), x.dtype


def _weighted_stats(x: torch.Tensor, g: torch.Tensor, dims: tuple[int, ...], count: torch.Tensor):
    mean = (x * g).sum(dims, keepdim=True) / count
    centred = x - mean
    var = (centred * centred * g).sum(dims, keepdim=True) / count
    return centred, var


def _layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, *_):
    w, g = _unwrap(weight)
    inner, out_dtype = _compute_dtype(input)
    x, g = input.to(inner), g.to(inner)
    centred, var = _weighted_stats(x, g, (-1,), g.sum().clamp_min(1e-12))
    y = centred * torch.rsqrt(var + eps) * w.to(inner)
    if bias is not None:
        y = y + bias.to(inner)
    return y.to(out_dtype)


def _group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, *_):
    w, g = _unwrap(weight)
    inner, out_dtype = _compute_dtype(input)
    n, c = input.shape[:2]
    x = input.to(inner).reshape(n, num_groups, c // num_groups, -1)
    gg = g.to(inner).view(num_groups, c // num_groups, 1)
    count = (gg.sum((1, 2)) * x.shape[-1]).clamp_min(1e-12).view(num_groups, 1, 1)
    centred, var = _weighted_stats(x, gg, (2, 3), count)
    y = (centred * torch.rsqrt(var + eps)).reshape(input.shape)
    shape = (1, c) + (1,) * (input.dim() - 2)
    y = y * w.to(inner).view(shape)
    if bias is not None:
        y = y + bias.to(inner).view(shape)
    return y.to(out_dtype)


def _rms_norm(input, normalized_shape, weight=None, eps=None, *_):
    w, g = _unwrap(weight)
    inner, out_dtype = _compute_dtype(input)
    x, g = input.to(inner), g.to(inner)
    eps = torch.finfo(input.dtype).eps if eps is None else eps
    ms = (x * x * g).sum(-1, keepdim=True) / g.sum().clamp_min(1e-12)
    return (x * torch.rsqrt(ms + eps) * w.to(inner)).to(out_dtype)


_NORMS: dict[Callable, Callable] = {
    F.layer_norm: _layer_norm, torch.layer_norm: _layer_norm,
    F.group_norm: _group_norm, torch.group_norm: _group_norm,
    F.rms_norm: _rms_norm, torch.rms_norm: _rms_norm,
}
