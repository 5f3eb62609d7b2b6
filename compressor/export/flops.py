"""Independent FLOPs count of a dense model with fvcore (the reference the cost model is checked
against).  fvcore skips two ops, so we register handles for them and the count is complete:
``scaled_dot_product_attention`` (its two matrix products, ``B*H*Nq*Nk*(D + Dv)``
multiply-accumulates) and ``_convolution_mode``, the convolution a string padding
(``padding="same"``, ConvMixer's depthwise convs) traces to (fvcore's own convolution count)."""
from __future__ import annotations

import warnings
from math import prod

import torch
from torch import nn


def _sdpa_handle(inputs, outputs) -> int:
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(inputs[i]) for i in range(3))
    return prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


def _conv_mode_handle(inputs, outputs) -> int:
    from fvcore.nn.jit_handles import conv_flop_count, get_shape

    return conv_flop_count(get_shape(inputs[0]), get_shape(inputs[1]), get_shape(outputs[0]), transposed=False)


def fvcore_flops(model: nn.Module, example_inputs: tuple | torch.Tensor) -> float:
    """Multiply-accumulates of one forward pass as fvcore counts them (plus attention)."""
    from fvcore.nn import FlopCountAnalysis

    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fa = FlopCountAnalysis(model.eval(), example_inputs)
        fa.set_op_handle("aten::scaled_dot_product_attention", _sdpa_handle)
        fa.set_op_handle("aten::_convolution_mode", _conv_mode_handle)
        fa.unsupported_ops_warnings(False)
        fa.uncalled_modules_warnings(False)
        fa.tracer_warnings("none")
        return float(fa.total())
