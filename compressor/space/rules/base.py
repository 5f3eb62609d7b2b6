"""One label-propagation rule per kind of aten op: registry and the generic rules.

A rule sees the op's real inputs and outputs, reads the input labels from the
:class:`~compressor.space.tracer.Trace`, joins atoms that must go together and labels the
outputs.  Ops without a rule take :func:`merge_rule`: every channel that flows in is tied to
every channel that flows out, which is always safe (it only freezes more).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..labels import filled, flat_atoms, has_atoms, narrow_shared, unlabelled
from ..tracer import Rule, Trace

aten = torch.ops.aten
_RULES: dict[Any, Rule] = {}

def op_name(func: Any) -> str:
    """The name of an aten op without its overload: ``"topk"`` for ``aten.topk.default``."""
    return func.__name__.split(".")[0]


def register(*ops: Any):
    """Decorator: use the function as the rule of every overload of the given ops."""

    def wrap(fn: Rule) -> Rule:
        for op in ops:
            if isinstance(op, torch._ops.OpOverloadPacket):
                for name in op.overloads():
                    _RULES[getattr(op, name)] = fn
            else:
                _RULES[op] = fn
        return fn

    return wrap


def rule_for(func: Any) -> Rule:
    """The rule registered for ``func``; pointwise-tagged ops share one; everything else merges."""
    rule = _RULES.get(func)
    if rule is not None:
        return rule
    if torch.Tag.pointwise in getattr(func, "tags", ()):
        return pointwise_rule
    return merge_rule


def _tensor_args(args: tuple) -> list[torch.Tensor]:
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(x for x in a if isinstance(x, torch.Tensor))
    return out


def tensor_outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [o for o in out if isinstance(o, torch.Tensor)]
    return []


def _fill(out: Any, root: int, tr: Trace) -> None:
    for o in tensor_outputs(out):
        tr.set_label(o, filled(o.shape, root))


# -- fallbacks ------------------------------------------------------------------------------------
def merge_rule(tr: Trace, func, args, kwargs, out) -> None:
    """Unknown op: all labeled inputs become one unit, and so is every output element."""
    labs = [tr.label_whole(t) for t in _tensor_args(args) + _tensor_args(tuple(kwargs.values()))
            if t.is_floating_point() or t.is_complex()]
    labs = [lab for lab in labs if has_atoms(lab)]
    root = tr.merge_all(labs, str(func)) if labs else -1
    _fill(out, root, tr)


def _varies(lab: torch.Tensor, d: int) -> bool:
    if lab.shape[d] <= 1 or lab.stride(d) == 0:
        return False
    arr = lab.numpy()
    return not (arr == arr.take([0], axis=d)).all()


def pointwise_rule(tr: Trace, func, args, kwargs, out) -> None:
    """Elementwise op: inputs are broadcast, positions that meet are joined."""
    outs = tensor_outputs(out)
    if not outs:
        return
    shape = tuple(outs[0].shape)
    raw = []
    for t in _tensor_args(args) + _tensor_args(tuple(kwargs.values())):
        lab = tr.label(t)
        if has_atoms(lab):
            raw.append(lab.reshape((1,) * (len(shape) - lab.dim()) + tuple(lab.shape)))
    labs = []
    for i, lab in enumerate(raw):
        # An input of size 1 along a dim where the others carry different channels (a scalar
        # scale, a per-sample gate) is shared by all of them: pin it rather than tie them all.
        spread = [d for d in range(len(shape)) if lab.shape[d] == 1 and shape[d] > 1]
        others = [o for j, o in enumerate(raw) if j != i]
        if spread and any(_varies(o, d) for o in others for d in spread):
            atoms = flat_atoms(lab)
            tr.box_pinned.append(np.unique(atoms[atoms >= 0]))
            continue
        labs.append(torch.broadcast_to(lab, shape))
    if not labs:
        result = unlabelled(shape)
    elif all(lab is labs[0] or torch.equal(lab, labs[0]) for lab in labs[1:]):
        result = labs[0]
    else:
        labs = narrow_shared(labs)  # positions that repeat in every input meet once
        small = tuple(labs[0].shape)
        stack = torch.stack([lab.reshape(-1) for lab in labs]).numpy()
        rep = stack.max(axis=0)
        for row in stack:
            tr.ds.union(rep, row)
        result = np.full(rep.shape, -1, dtype=np.int64)
        has = rep >= 0
        result[has] = tr.ds.find(rep[has])
        result = torch.from_numpy(result).reshape(small).expand(shape)
    for o in outs:
        if tuple(o.shape) == shape:
            tr.set_label(o, result)


@register(aten.empty, aten.empty_like, aten.zeros, aten.zeros_like, aten.ones, aten.ones_like, aten.full,
          aten.full_like, aten.arange, aten.randn, aten.rand, aten.randn_like, aten.rand_like,
          aten.empty_strided, aten.scalar_tensor, aten.linspace, aten.new_zeros, aten.new_ones,
          aten.new_empty, aten.new_full, aten.eye, aten.tensor, aten._local_scalar_dense,
          aten.sym_size, aten.sym_stride, aten.sym_numel, aten.bernoulli_, aten.uniform_, aten.normal_,
          aten.fill_, aten.zero_, aten.bernoulli, aten.randint, aten.randperm, aten.is_nonzero,
          aten.equal, aten.allclose, aten.isnan, aten.isinf, aten.nonzero)
def fresh_rule(tr: Trace, func, args, kwargs, out) -> None:
    """Factories and in-place refills carry no channel."""
    for o in tensor_outputs(out):
        tr.set_label(o, unlabelled(o.shape))


EXTRA_POINTWISE = [aten.hardswish, aten.hardswish_, aten.hardsigmoid, aten.hardsigmoid_, aten.silu,
                   aten.silu_, aten.mish, aten.mish_, aten.gelu, aten.gelu_, aten.elu, aten.elu_,
                   aten.leaky_relu, aten.leaky_relu_, aten.hardtanh, aten.hardtanh_, aten.softplus,
                   aten.relu6, aten._prelu_kernel, aten.where, aten.masked_fill,
                   aten.masked_fill_, aten.clamp, aten.clamp_, aten.threshold]
register(*EXTRA_POINTWISE)(pointwise_rule)
