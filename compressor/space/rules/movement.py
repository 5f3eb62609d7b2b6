"""Data movement: the op itself is applied to the label tensor (views, cat/split, pads...)."""
from __future__ import annotations

from typing import Any

import torch

from ..labels import filled, has_atoms, narrow_shared
from ..tracer import Trace

from .base import tensor_outputs, aten, merge_rule, op_name, register

# t/transpose/permute are registered in layers.py: F.linear reaches us as t(weight).
_MOVES = [
    aten.view, aten._unsafe_view, aten.reshape, aten.expand,
    aten.unsqueeze, aten.squeeze, aten.select, aten.slice, aten.split, aten.split_with_sizes,
    aten.unbind, aten.chunk, aten.clone, aten.contiguous, aten.alias, aten.roll, aten.flip,
    aten.narrow, aten.repeat, aten.index_select, aten.index, aten.pixel_shuffle,
    aten.pixel_unshuffle, aten.channel_shuffle, aten.detach, aten.lift_fresh, aten.expand_as,
    aten.view_as, aten.movedim, aten.unflatten, aten.flatten, aten.diagonal, aten.tile,
    aten.unfold, aten.as_strided, aten.gather,
]


def _as_cpu(a: Any) -> Any:
    if isinstance(a, torch.Tensor):
        return a.cpu()
    if isinstance(a, (list, tuple)) and any(isinstance(x, torch.Tensor) for x in a):
        return type(a)(x.cpu() if isinstance(x, torch.Tensor) else x for x in a)
    return a


@register(*_MOVES)
def move_rule(tr: Trace, func, args, kwargs, out) -> None:
    lab = tr.label(args[0])
    rest = [_as_cpu(a) for a in args[1:]]
    kw = {k: _as_cpu(v) for k, v in kwargs.items()}
    name = op_name(func)
    if name in ("view", "_unsafe_view"):  # a stored label need not be viewable as its tensor is
        res = lab.reshape(*rest, **kw)
    else:
        res = func(lab.contiguous() if name == "as_strided" else lab, *rest, **kw)
    _assign(tr, out, res)
    if name in ("view", "_unsafe_view", "reshape", "unflatten") and isinstance(out, torch.Tensor):
        tr.record_reshape(out)
    elif name in ("split_with_sizes", "split_with_sizes_copy"):
        dim = kwargs.get("dim", args[2] if len(args) > 2 else 0)
        tr.record_split(args[0], dim, [int(v) for v in args[1]])
    elif name in ("split", "unbind", "chunk", "unsafe_split"):
        _tie_parts(tr, [o for o in tensor_outputs(out)], str(func))


def _tie_parts(tr: Trace, parts: list[torch.Tensor], op: str) -> None:
    """Parts cut from one dim by its runtime size stay aligned only if they lose the same
    positions: tie position i of every part (parts of unequal size tie everything)."""
    labs = [tr.labels[p] for p in parts if p in tr.labels]
    if len(labs) < 2 or not any(has_atoms(lab) for lab in labs):
        return
    if all(lab.shape == labs[0].shape for lab in labs):
        small = narrow_shared(labs)
        stack = torch.stack([lab.reshape(-1) for lab in small], 1).numpy()
        roots = tr.reduce_rows(stack, op)
        new = [torch.from_numpy(roots).reshape(small[0].shape).expand(labs[0].shape)] * len(labs)
    else:
        root = tr.merge_all(labs, op)
        new = [filled(lab.shape, root) for lab in labs]
    for p, lab, n in zip(parts, labs, new):
        tr.set_label(p, torch.where(lab >= 0, n, lab))


@register(aten.cat, aten.stack, aten.concat)
def cat_rule(tr: Trace, func, args, kwargs, out) -> None:
    labs = [tr.label(t) for t in args[0]]
    res = func(labs, *args[1:], **kwargs)
    _assign(tr, out, res)


@register(aten.constant_pad_nd)
def pad_rule(tr: Trace, func, args, kwargs, out) -> None:
    res = aten.constant_pad_nd(tr.label(args[0]), args[1], -1)
    _assign(tr, out, res)


@register(aten._to_copy, aten.to, aten.copy, aten.lift_fresh_copy, aten.type_as, aten.dropout,
          aten.native_dropout, aten.feature_dropout, aten.alpha_dropout)
def identity_rule(tr: Trace, func, args, kwargs, out) -> None:
    lab = tr.label(args[0])
    for o in tensor_outputs(out):
        if tuple(o.shape) == tuple(lab.shape):
            tr.set_label(o, lab)


@register(aten.as_strided_)
def restride_rule(tr: Trace, func, args, kwargs, out) -> None:
    """``as_strided_`` to the tensor's own shape is how kernels give an output the memory format
    of their input (``mean`` over a channels-last tensor): the channels do not move."""
    x = args[0]
    if tuple(args[1]) == tuple(x.shape):
        tr.set_label(out, tr.label(x))
    else:
        merge_rule(tr, func, args, kwargs, out)


@register(aten.copy_)
def copy_rule(tr: Trace, func, args, kwargs, out) -> None:
    tr.set_label(out, torch.broadcast_to(tr.label(args[1]), tuple(out.shape)).clone())


def _assign(tr: Trace, out: Any, res: Any) -> None:
    if isinstance(out, torch.Tensor):
        tr.set_label(out, res)
    else:
        for o, r in zip(out, res):
            tr.set_label(o, r)


