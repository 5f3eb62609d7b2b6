"""The units a latency table measures: one conv or linear layer of the model, rebuilt at a pair of
kept-width fractions as a standalone ONNX graph (convolution + bias + ReLU, which is what
onnxruntime runs after it folds batch norm into the convolution and fuses the activation).

A unit is found for every FLOPs term that reads the weight of an ``nn.Conv2d`` or ``nn.Linear``
whose channel factors the table can vary: ``[out, in]`` for a dense conv or linear layer, one
factor (whole groups) for a depthwise or grouped conv.  Anything else (norms, pooling, attention
products, transposed or 3-D convs) is costed in proportion to its FLOPs (:mod:`.cost`).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..space.cost import Term

GRID = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)  # kept fractions measured along each axis


@dataclass(frozen=True)
class Unit:
    """One layer's geometry.  ``kind`` is ``conv`` (dense: out x in), ``groups`` (depthwise or
    grouped: whole groups go) or ``linear``; ``rows`` is what a linear layer multiplies per image."""

    kind: str
    cin: int
    cout: int
    kernel: tuple[int, ...] = (1, 1)
    stride: tuple[int, ...] = (1, 1)
    padding: tuple[int, ...] = (0, 0)
    dilation: tuple[int, ...] = (1, 1)
    groups: int = 1
    spatial: tuple[int, ...] = ()
    rows: int = 1

    @property
    def axes(self) -> int:
        """How many width fractions the unit's latency depends on (1: whole groups)."""
        return 1 if self.kind == "groups" else 2

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def widths(self, r_out: float, r_in: float) -> tuple[int, int, int]:
        """``(cin, cout, groups)`` kept at the fractions (at least one channel or group)."""
        if self.kind == "groups":
            g = max(1, round(r_out * self.groups))
            return self.cin // self.groups * g, self.cout // self.groups * g, g
        return max(1, round(r_in * self.cin)), max(1, round(r_out * self.cout)), 1

    def graph(self, r_out: float, r_in: float, batch: int):
        """A standalone ONNX model of the unit at the fractions, and its input's shape."""
        from onnx import TensorProto, helper, numpy_helper

        cin, cout, g = self.widths(r_out, r_in)
        rng = np.random.default_rng(0)
        if self.kind == "linear":
            shape = [batch * self.rows, cin]
            inits = [numpy_helper.from_array(rng.standard_normal((cin, cout)).astype(np.float32) * 0.05, "W"),
                     numpy_helper.from_array(np.zeros(cout, np.float32), "B")]
            nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "B"], ["y"])]
        else:
            shape = [batch, cin, *self.spatial]
            w = rng.standard_normal((cout, cin // g, *self.kernel)).astype(np.float32) * 0.05
            inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.zeros(cout, np.float32), "B")]
            nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=list(self.kernel),
                                      strides=list(self.stride), pads=list(self.padding) * 2,
                                      dilations=list(self.dilation), group=g),
                     helper.make_node("Relu", ["c"], ["y"])]
        graph = helper.make_graph(nodes, "unit", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model, shape


def find_units(model: nn.Module, example: torch.Tensor, terms: list[Term]) -> dict[int, Unit]:
    """``{term index: Unit}`` for the FLOPs terms the table can measure (see the module doc)."""
    modules = dict(model.named_modules())
    shapes = _input_shapes(model, example, {t.weight.rsplit(".", 1)[0] for t in terms if t.weight})
    units = {}
    for i, t in enumerate(terms):
        name = t.weight.rsplit(".", 1)[0] if t.weight and t.weight.endswith(".weight") else None
        if name not in shapes or t.op not in ("conv", "linear"):
            continue
        unit = _unit(modules[name], shapes[name], sum(f.kind == "channels" for f in t.factors))
        if unit is not None:
            units[i] = unit
    return units


def _unit(m: nn.Module, shape: tuple[int, ...], channel_factors: int) -> Unit | None:
    if isinstance(m, nn.Linear) and channel_factors == 2 and len(shape) >= 2:
        return Unit("linear", m.in_features, m.out_features, rows=math.prod(shape[1:-1]))
    if not isinstance(m, nn.Conv2d) or isinstance(m.padding, str) or m.padding_mode != "zeros" or len(shape) != 4:
        return None
    geometry = {"kernel": tuple(m.kernel_size), "stride": tuple(m.stride), "padding": tuple(m.padding),
                "dilation": tuple(m.dilation), "spatial": tuple(shape[2:])}
    if m.groups == 1 and channel_factors == 2:
        return Unit("conv", m.in_channels, m.out_channels, **geometry)
    if m.groups > 1 and channel_factors == 1 and m.groups >= m.in_channels // m.groups:
        return Unit("groups", m.in_channels, m.out_channels, groups=m.groups, **geometry)
    return None


def _input_shapes(model: nn.Module, example: torch.Tensor, names: set[str]) -> dict[str, tuple[int, ...]]:
    """The input shape of every named module, from one forward pass on ``example``."""
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, m in model.named_modules():
        if name in names and isinstance(m, (nn.Conv2d, nn.Linear)):
            def hook(mod, args, name=name):
                if args and isinstance(args[0], torch.Tensor):
                    shapes.setdefault(name, tuple(args[0].shape))
            hooks.append(m.register_forward_pre_hook(hook))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes
