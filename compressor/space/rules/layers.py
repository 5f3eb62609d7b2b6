"""Ops that read parameters: convolutions, linear layers, normalisations."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..labels import flat_atoms, unlabelled
from ..records import ParamOp
from ..standardise import WEIGHT
from ..tracer import Trace
from .attention import activation_product_rule
from .base import tensor_outputs, aten, merge_rule, op_name, register
from .movement import move_rule
from .reduce import reduce_labels

# -- layers with parameters ------------------------------------------------------------------------
@register(aten.convolution, aten._convolution)
def conv_rule(tr: Trace, func, args, kwargs, out) -> None:
    x, w, b = args[0], args[1], args[2]
    transposed, groups = bool(args[6]), int(args[8])
    wname = tr.param_name(w)
    std = tr.standardised.get(w) if wname is None else None
    if std is not None and std.stage == WEIGHT:  # a standardised weight: laid out as its parameter
        w = std.param
        wname = tr.param_name(w)
        tr.standardised_params.add(wname)
    else:
        std = None
    cin = x.shape[1]
    cout = out.shape[1]
    # MACs: every output pixel reads a k x k patch; a transposed conv instead scatters every
    # *input* pixel into a k x k patch, so its positions are the input's (as fvcore counts them).
    positions = (out.shape[0], cout, *(x.shape[2:] if transposed else out.shape[2:]))
    if wname is None:  # a weight computed in forward (weight standardisation): tied, but costed
        merge_rule(tr, func, args, kwargs, out)
        root = int(tr.label(out).reshape(-1)[0]) if out.numel() else -1
        tr.cost("conv", math.prod(w.shape[2:]) * (cin // groups), torch.full(positions, root, dtype=torch.long))
        return
    _record_conv(tr, wname, w, x, out, args)
    conv = _Conv(w, wname, tr.vector(tr.label(x), 1, str(func)), tr.fresh(cout, f"{wname}"), groups, transposed,
                 math.prod(w.shape[2:]), positions, tuple(out.shape), str(func))
    if groups == 1:
        out_lab, w_rows, w_cols = _dense_conv(tr, conv)
    elif not transposed and groups < cin // groups:
        out_lab, w_rows, w_cols = _wide_groups_conv(tr, conv)
    else:
        out_lab, w_rows, w_cols = _whole_groups_conv(tr, conv)
    if std is not None:
        _standardised_rows(tr, std, w_rows, w_cols, conv.ksize)
    if b is not None:
        tr.param_dim(b, 0, conv.o_atoms)
    tr.set_label(out, out_lab)


@dataclass(frozen=True)
class _Conv:
    """What the labelling of one convolution's channels reads: its weight, input channel labels
    (``lin``), fresh output atoms, and shapes."""

    w: torch.Tensor
    wname: str
    lin: np.ndarray
    o_atoms: np.ndarray
    groups: int
    transposed: bool
    ksize: int
    positions: tuple[int, ...]
    out_shape: tuple[int, ...]
    func: str


def _dense_conv(tr: Trace, c: _Conv) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """groups = 1: output and input channels are independent units.  Returns (output labels,
    weight rows, weight columns)."""
    in_dim, out_dim = (0, 1) if c.transposed else (1, 0)
    tr.param_dim(c.w, out_dim, c.o_atoms)
    tr.param_dim(c.w, in_dim, c.lin)
    tr.gate_site(c.w, in_dim, c.lin)
    tr.cost("conv", c.ksize, _channel_labels(c.o_atoms, c.positions), c.lin, weight=c.wname)
    return _channel_labels(c.o_atoms, c.out_shape), c.o_atoms, c.lin


def _wide_groups_conv(tr: Trace, c: _Conv) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Few wide groups (ResNeSt's radix): position i of every group is one unit, on each side, so
    every group keeps the same positions and ``groups`` stays."""
    kin, kout = c.lin.size // c.groups, c.o_atoms.size // c.groups
    pin = tr.reduce_rows(c.lin.reshape(c.groups, kin).T.copy(), c.func)
    pout = tr.reduce_rows(c.o_atoms.reshape(c.groups, kout).T.copy(), c.func)
    rows = np.tile(pout, c.groups)
    tr.param_dim(c.w, 0, rows)
    tr.param_dim(c.w, 1, pin)
    tr.gate_site(c.w, 1, pin)
    out_lab = _channel_labels(rows, c.out_shape)
    tr.cost("conv", c.ksize, out_lab, pin, weight=c.wname)
    return out_lab, rows, pin


def _whole_groups_conv(tr: Trace, c: _Conv) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every group of channels stays whole: input group g and output group g are one unit."""
    kin, kout = c.lin.size // c.groups, c.o_atoms.size // c.groups
    tr.reduce_rows(np.concatenate([c.lin.reshape(c.groups, kin), c.o_atoms.reshape(c.groups, kout)], axis=1), c.func)
    dim0 = c.lin if c.transposed else c.o_atoms
    tr.param_dim(c.w, 0, dim0)
    tr.gate_site(c.w, 0, dim0)
    rows = tr.ds.find(c.o_atoms)
    tr.cost("conv", c.ksize * kin, _channel_labels(rows, c.positions), weight=c.wname)
    return _channel_labels(rows, c.out_shape), rows, np.full(kin, -1)


def _record_conv(tr: Trace, wname: str, w: torch.Tensor, x: torch.Tensor, out: torch.Tensor, args) -> None:
    """What a choice over the op itself (its kernel window) needs: shapes and arguments."""
    tr.param_ops.append(ParamOp("conv", wname, tr.module, tr.flow.current, tuple(w.shape), tuple(x.shape),
                                tuple(out.shape), {"stride": tuple(args[3]), "padding": tuple(args[4]),
                                                   "dilation": tuple(args[5]), "transposed": bool(args[6]),
                                                   "groups": int(args[8])}))


def _standardised_rows(tr: Trace, std, rows: np.ndarray, cols: np.ndarray, ksize: int) -> None:
    """A weight normalised per output row in the forward: its gain and bias go with the rows, the
    normalisation costs what fvcore counts for a batch norm in training over the weight, and a
    row never shrinks to one element."""
    for t in (std.gain, std.bias):
        if isinstance(t, torch.Tensor) and t.dim() == 1 and t.shape[0] == len(rows):
            if tr.param_name(t) is not None:
                tr.param_dim(t, 0, rows)
            else:
                lab = tr.label(t)
                vec = tr.vector(lab, 0, "weight standardisation")
                has = (vec >= 0) & (rows >= 0)
                tr.ds.union(rows[has], vec[has])
                # a gain computed from a parameter (``gain * scale``) labelled it before the
                # convolution ran: the group is the convolution's, named and ordered after it
                own = np.unique(lab.numpy())
                late = [p for p in tr.producers if np.isin(p.atoms, own).any()]
                tr.producers = [p for p in tr.producers if not np.isin(p.atoms, own).any()] + late
    tr.cost("batch_norm", (5.0 if isinstance(std.gain, torch.Tensor) else 4.0) * ksize, rows, cols)
    if ksize == 1:  # a row of one element cannot be standardised (torch refuses): two inputs stay
        tr.box_pinned.append(cols[cols >= 0][:2])


def _channel_labels(atoms: np.ndarray, shape: torch.Size, dim: int = 1) -> torch.Tensor:
    view = [1] * len(shape)
    view[dim] = shape[dim]
    return torch.from_numpy(np.ascontiguousarray(atoms)).reshape(view).expand(tuple(shape))


def _per_channel(tr: Trace, op: str, x: torch.Tensor, dim: int, params, groups: int = 1) -> np.ndarray:
    """A channel-wise layer along ``dim`` of ``x`` (norms): one atom per channel, its per-channel
    ``params`` laid out the same; with several groups of several channels, position i of every
    group joined.  Returns the channels' roots."""
    vec = tr.vector(tr.label(x), dim, op)
    if 1 < groups < len(vec):
        tr.reduce_rows(vec.reshape(groups, -1).T.copy(), op)
    for p in params:
        if isinstance(p, torch.Tensor) and p.dim() == 1 and p.shape[0] == x.shape[dim]:
            if tr.param_name(p) is not None:
                tr.param_dim(p, 0, vec)
            else:  # a buffer or a computed tensor: joined where both sides carry channels (not a raw input)
                other = tr.vector(tr.label(p), 0, op)
                both = (vec >= 0) & (other >= 0)
                tr.ds.union(vec[both], other[both])
    roots, has = np.full(len(vec), -1, dtype=np.int64), vec >= 0  # -1: a channel of the raw input
    roots[has] = tr.ds.find(vec[has])
    return roots


def _linear(tr: Trace, func, x: torch.Tensor, w: torch.Tensor, w_in_dim: int, bias, out) -> None:
    wname = tr.param_name(w)
    if wname is not None:
        tr.param_ops.append(ParamOp("linear", wname, tr.module, tr.flow.current, tuple(w.shape), tuple(x.shape),
                                    tuple(out.shape), {"bias": bias is not None}))
    lab = tr.label(x)
    rows = lab.reshape(-1, lab.shape[-1]) if lab.dim() else lab.reshape(1, 1)
    first = rows[:, :1]
    if rows.shape[1] > 1 and bool((rows == first).all()) and bool((first >= 0).any()) \
            and not bool((first == first[0]).all()):
        # The contracted dim carries no channels, the rows do (Mixer's token MLP runs over the
        # tokens of each channel): every row keeps its channel, and this layer's own dims stay
        # whole (one label per element cannot hold both).
        out_lab = first.reshape(*lab.shape[:-1], 1).expand(tuple(out.shape))
        tr.cost("linear", 1.0, out_lab, np.full(rows.shape[1], -1), weight=wname)
        tr.set_label(out, out_lab)
        return
    lin = tr.vector(lab, x.dim() - 1, str(func))
    n_out = out.shape[-1]
    o_atoms = tr.fresh(n_out, tr.param_name(w))
    tr.param_dim(w, 1 - w_in_dim, o_atoms)
    tr.param_dim(w, w_in_dim, lin)
    tr.gate_site(w, w_in_dim, lin)
    if bias is not None:
        if tr.param_name(bias) is not None:
            tr.param_dim(bias, 0, o_atoms)
        else:
            tr.ds.union(np.broadcast_to(o_atoms, tuple(bias.shape)), tr.label(bias).numpy())
    shape = tuple(out.shape)
    out_lab = torch.from_numpy(o_atoms).expand(shape)
    tr.cost("linear", 1.0, out_lab, lin, weight=wname)
    tr.set_label(out, out_lab)


@register(aten.t, aten.transpose, aten.permute, aten.numpy_T)
def transpose_rule(tr: Trace, func, args, kwargs, out) -> None:
    w = args[0]
    if tr.param_name(w) is not None and w.dim() == 2 and out.dim() == 2:
        # ``F.linear`` reaches us as ``t(weight)`` then ``addmm``: remember the transposed weight.
        tr.labels[out] = unlabelled(out.shape)
        tr.param_t[out] = w
        return
    move_rule(tr, func, args, kwargs, out)


@register(aten.addmm)
def addmm_rule(tr: Trace, func, args, kwargs, out) -> None:
    bias, x, wt = args[0], args[1], args[2]
    w = tr.param_t.get(wt)
    if w is None:
        return activation_product_rule(tr, func, args[1:], kwargs, out, bias=bias)
    _linear(tr, func, x, w, 1, bias, out)


@register(aten.mm, aten.matmul, aten.bmm)
def mm_rule(tr: Trace, func, args, kwargs, out) -> None:
    w = tr.param_t.get(args[1])
    if w is not None and args[0].dim() == 2:
        return _linear(tr, func, args[0], w, 1, None, out)
    return activation_product_rule(tr, func, args, kwargs, out)


@register(aten.linear)
def linear_rule(tr: Trace, func, args, kwargs, out) -> None:
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else kwargs.get("bias")
    if tr.param_name(w) is None:
        return merge_rule(tr, func, args, kwargs, out)
    _linear(tr, func, x, w, 1, b, out)



@register(aten.native_batch_norm, aten._native_batch_norm_legit, aten._native_batch_norm_legit_no_training,
          aten._native_batch_norm_legit_functional, aten.batch_norm, aten.instance_norm)
def batch_norm_rule(tr: Trace, func, args, kwargs, out) -> None:
    x = args[0]
    vec = _per_channel(tr, str(func), x, 1, args[1:5])
    out_lab = _channel_labels(vec, x.shape)
    first = tensor_outputs(out)[0]
    tr.set_label(first, out_lab)
    affine = isinstance(args[1], torch.Tensor)
    # Batch statistics computed in the forward (training=True even in eval mode: weight
    # standardisation normalises the weight this way) cost what fvcore counts for them.
    training = "no_training" not in op_name(func) and next((a for a in args[3:] if isinstance(a, bool)), False)
    tr.cost("batch_norm", (5.0 if affine else 4.0) if training else (2.0 if affine else 1.0), out_lab)


def _norm_over(tr: Trace, func, x: torch.Tensor, dims: list[int], params: tuple, out, coef: float) -> None:
    """Normalisation over ``dims``: every channel inside them becomes one unit (its statistics
    would change if one were removed), and so do the affine parameters."""
    red = reduce_labels(tr, tr.label(x), dims, str(func))
    row = flat_atoms(red)[:1]
    for p in params:
        if isinstance(p, torch.Tensor):
            plab = tr.label(p).reshape(-1).numpy()
            tr.ds.union(np.broadcast_to(row, plab.shape), plab)
    if (row >= 0).any():
        red = torch.from_numpy(np.where(red.numpy() >= 0, tr.ds.find(np.maximum(red.numpy(), 0)), -1))
    out_lab = red.expand(tuple(x.shape))
    tr.set_label(tensor_outputs(out)[0], out_lab)
    tr.cost(op_name(func).replace("native_", ""), coef, out_lab)


def _masked_norm(tr: Trace, func, kind: str, x: torch.Tensor, dim: int, groups: int, params: tuple,
                 out, coef: float) -> None:
    """A normalisation over the channels along ``dim`` (in ``groups`` equal groups) whose affine
    weight is a traced parameter.  The channels stay apart: the gated model computes the
    statistics over kept channels only (a norm site, :mod:`compressor.gates.norms`), which is what
    the sliced model computes.  With several groups of several channels, position i of every group
    is one unit, so each group keeps the same positions and ``num_groups`` stays."""
    vec = _per_channel(tr, str(func), x, dim, params, groups)
    out_lab = _channel_labels(vec, x.shape, dim)
    tr.set_label(tensor_outputs(out)[0], out_lab)
    if groups < len(vec):  # one channel per group: statistics never mix channels
        tr.norm_site(params[0], kind, vec, groups)
    tr.cost(kind, coef, out_lab)


def _traced(tr: Trace, p) -> bool:
    return isinstance(p, torch.Tensor) and tr.param_name(p) is not None


@register(aten.native_layer_norm, aten.layer_norm)
def layer_norm_rule(tr: Trace, func, args, kwargs, out) -> None:
    x, shape = args[0], list(args[1])
    weight = args[2] if len(args) > 2 else kwargs.get("weight")
    bias = args[3] if len(args) > 3 else kwargs.get("bias")
    coef = 5.0 if isinstance(weight, torch.Tensor) else 4.0
    if len(shape) == 1 and _traced(tr, weight):
        return _masked_norm(tr, func, "layer_norm", x, x.dim() - 1, 1, (weight, bias), out, coef)
    _norm_over(tr, func, x, list(range(x.dim() - len(shape), x.dim())), (weight, bias), out, coef)


@register(aten.native_group_norm, aten.group_norm)
def group_norm_rule(tr: Trace, func, args, kwargs, out) -> None:
    x = args[0]
    if func.overloadpacket is aten.native_group_norm:
        weight, bias, groups = args[1], args[2], int(args[6])
    else:
        groups = int(args[1])
        weight = args[2] if len(args) > 2 else kwargs.get("weight")
        bias = args[3] if len(args) > 3 else kwargs.get("bias")
    coef = 5.0 if isinstance(weight, torch.Tensor) else 4.0
    if _traced(tr, weight) and x.dim() >= 2:
        return _masked_norm(tr, func, "group_norm", x, 1, groups, (weight, bias), out, coef)
    _norm_over(tr, func, x, list(range(1, x.dim())), (weight, bias), out, coef)
