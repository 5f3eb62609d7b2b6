"""One label-propagation rule per kind of aten op.

A rule sees the op's real inputs and outputs, reads the input labels from the
:class:`~compressor.space.tracer.Trace`, joins atoms that must go together and labels the
outputs.  Ops without a rule take :func:`merge_rule`: every channel that flows in is tied to
every channel that flows out, which is always safe (it only freezes more).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .tracer import Rule, Trace

aten = torch.ops.aten
_RULES: dict[Any, Rule] = {}


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


def _outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [o for o in out if isinstance(o, torch.Tensor)]
    return []


def _fill(out: Any, root: int, tr: Trace) -> None:
    for o in _outputs(out):
        tr.set_label(o, torch.full(tuple(o.shape), root, dtype=torch.int64))


# -- fallbacks ------------------------------------------------------------------------------------
def merge_rule(tr: Trace, func, args, kwargs, out) -> None:
    """Unknown op: all labeled inputs become one unit, and so is every output element."""
    labs = [tr.label(t) for t in _tensor_args(args) + _tensor_args(tuple(kwargs.values()))
            if t.is_floating_point() or t.is_complex()]
    labs = [lab for lab in labs if (lab >= 0).any()]
    root = tr.merge_all(labs, str(func)) if labs else -1
    _fill(out, root, tr)


def pointwise_rule(tr: Trace, func, args, kwargs, out) -> None:
    """Elementwise op: inputs are broadcast, positions that meet are joined."""
    outs = _outputs(out)
    if not outs:
        return
    shape = tuple(outs[0].shape)
    labs = []
    for t in _tensor_args(args) + _tensor_args(tuple(kwargs.values())):
        if t.dim() == 0 and not (tr.label(t) >= 0).any():
            continue
        lab = tr.label(t)
        if (lab >= 0).any():
            labs.append(torch.broadcast_to(lab, shape))
    if not labs:
        result = torch.full(shape, -1, dtype=torch.int64)
    elif all(lab is labs[0] or torch.equal(lab, labs[0]) for lab in labs[1:]):
        result = labs[0].contiguous()
    else:
        stack = torch.stack([lab.reshape(-1) for lab in labs]).numpy()
        rep = stack.max(axis=0)
        for row in stack:
            tr.ds.union(rep, row)
        result = np.full(rep.shape, -1, dtype=np.int64)
        has = rep >= 0
        result[has] = tr.ds.find(rep[has])
        result = torch.from_numpy(result).reshape(shape)
    for o in outs:
        if tuple(o.shape) == shape:
            tr.set_label(o, result)


# -- data movement: the op itself is applied to the labels -------------------------------------------
_MOVES = [
    aten.view, aten._unsafe_view, aten.reshape, aten.permute, aten.transpose, aten.t, aten.expand,
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
    res = func(lab, *rest, **kw)
    _assign(tr, out, res)
    name = func.__name__.split(".")[0]
    if name in ("view", "_unsafe_view", "reshape", "unflatten") and isinstance(out, torch.Tensor):
        _keep_reshape_separable(tr, out, args[0])
    elif name in ("split", "split_with_sizes", "unbind", "chunk", "unsafe_split"):
        _tie_parts(tr, [o for o in _outputs(out)], str(func))


def _tie_parts(tr: Trace, parts: list[torch.Tensor], op: str) -> None:
    """Parts cut from one dim by its runtime size stay aligned only if they lose the same
    positions: tie position i of every part (parts of unequal size tie everything)."""
    labs = [tr.labels[p] for p in parts if p in tr.labels]
    if len(labs) < 2 or not any((lab >= 0).any() for lab in labs):
        return
    if all(lab.shape == labs[0].shape for lab in labs):
        stack = torch.stack([lab.reshape(-1) for lab in labs], 1).numpy()
        roots = tr.reduce_rows(stack, op)
        new = torch.from_numpy(roots).reshape(labs[0].shape)
    else:
        root = tr.merge_all(labs, op)
        new = None
    for p, lab in zip(parts, labs):
        tr.set_label(p, torch.where(lab >= 0, new if new is not None else torch.full_like(lab, root), lab))


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
    for o in _outputs(out):
        if tuple(o.shape) == tuple(lab.shape):
            tr.set_label(o, lab)


@register(aten.copy_)
def copy_rule(tr: Trace, func, args, kwargs, out) -> None:
    tr.set_label(out, torch.broadcast_to(tr.label(args[1]), tuple(out.shape)).clone())


def _assign(tr: Trace, out: Any, res: Any) -> None:
    if isinstance(out, torch.Tensor):
        tr.set_label(out, res.contiguous() if isinstance(res, torch.Tensor) else res)
    else:
        for o, r in zip(out, res):
            tr.set_label(o, r.contiguous())


def _keep_reshape_separable(tr: Trace, out: torch.Tensor, src: torch.Tensor) -> None:
    """A reshape that spreads one channel dim over several dims (heads, shuffles) can only be
    sliced if what is kept forms a box: tie positions along all of those dims but the largest."""
    lab = tr.labels.get(out)
    if lab is None or lab.dim() < 2 or not (lab >= 0).any():
        return
    varying = []
    for d in range(lab.dim()):
        if lab.shape[d] > 1 and not torch.equal(lab, lab.narrow(d, 0, 1).expand_as(lab)):
            varying.append(d)
    if len(varying) <= 1:
        return
    keep = max(varying, key=lambda d: lab.shape[d])
    others = [d for d in range(lab.dim()) if d != keep]
    perm = [keep] + others
    rows = lab.permute(perm).reshape(lab.shape[keep], -1).numpy()
    roots = tr.reduce_rows(rows, f"reshape {tuple(src.shape)}->{tuple(out.shape)}")
    shape = [1] * lab.dim()
    shape[keep] = lab.shape[keep]
    new = torch.from_numpy(roots).reshape(shape).expand(tuple(lab.shape)).contiguous()
    new = torch.where(lab >= 0, new, lab)
    tr.set_label(out, new)


# -- reductions ------------------------------------------------------------------------------------
def _reduce(tr: Trace, lab: torch.Tensor, dims: list[int], op: str) -> torch.Tensor:
    """Join labels over ``dims`` for every position of the remaining dims (kept as size-1)."""
    nd = lab.dim()
    dims = sorted({d % nd for d in dims}) if nd else []
    keep = [d for d in range(nd) if d not in dims]
    if not dims:
        return lab
    arr = lab.permute(keep + dims).reshape(int(np.prod([lab.shape[d] for d in keep] or [1])), -1).numpy()
    roots = tr.reduce_rows(arr, op)
    shape = [lab.shape[d] if d in keep else 1 for d in range(nd)]
    return torch.from_numpy(roots).reshape(shape)


def _dims_arg(args, kwargs, pos: int, nd: int) -> list[int]:
    dims = kwargs.get("dim", args[pos] if len(args) > pos else None)
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return list(range(nd))
    return [dims] if isinstance(dims, int) else list(dims)


@register(aten.mean, aten.sum, aten.amax, aten.amin, aten.max, aten.min, aten.var, aten.std,
          aten.var_mean, aten.std_mean, aten.logsumexp, aten.norm, aten.linalg_vector_norm, aten.prod,
          aten.argmax, aten.argmin, aten.all, aten.any)
def reduce_rule(tr: Trace, func, args, kwargs, out) -> None:
    x = args[0]
    lab = tr.label(x)
    if func.__name__ in ("norm",) or func.__name__.startswith("linalg_vector_norm"):
        pos = 2
    else:
        pos = 1
    if func.__name__ in ("max", "min") and len(args) == 1 and "dim" not in kwargs:
        dims = list(range(x.dim()))
    else:
        dims = _dims_arg(args, kwargs, pos, x.dim())
    red = _reduce(tr, lab, dims, str(func))
    if func is aten.mean.dim and "adaptive_avg_pool2d" in tr.functions[:1]:
        tr.cost("adaptive_avg_pool2d", 1.0, lab)  # fvcore counts the pooling op it came from
    for o in _outputs(out):
        r = red.reshape(tuple(o.shape)) if red.numel() == o.numel() else red.expand(tuple(o.shape))
        tr.set_label(o, r.contiguous())


@register(aten._softmax, aten._log_softmax, aten.softmax, aten.log_softmax, aten.cumsum, aten.cumprod,
          aten.sort, aten.topk, aten.argsort)
def along_dim_rule(tr: Trace, func, args, kwargs, out) -> None:
    x = args[0]
    dim = kwargs.get("dim", args[1] if len(args) > 1 and isinstance(args[1], int) else -1)
    if func.__name__ == "topk":
        dim = kwargs.get("dim", args[2] if len(args) > 2 else -1)
    red = _reduce(tr, tr.label(x), [dim], str(func))
    for o in _outputs(out):
        if o.dim() == red.dim():
            shape = list(red.shape)
            tr.set_label(o, red.expand(*[o.shape[i] if shape[i] == 1 else shape[i] for i in range(o.dim())]).contiguous())


_SPATIAL = [
    aten.max_pool1d, aten.max_pool2d, aten.max_pool3d, aten.max_pool2d_with_indices,
    aten.max_pool3d_with_indices, aten.avg_pool1d, aten.avg_pool2d, aten.avg_pool3d,
    aten.adaptive_avg_pool1d, aten.adaptive_avg_pool2d, aten._adaptive_avg_pool2d,
    aten.adaptive_avg_pool3d, aten._adaptive_avg_pool3d, aten.adaptive_max_pool1d,
    aten.adaptive_max_pool2d, aten.adaptive_max_pool3d, aten.upsample_nearest1d,
    aten.upsample_nearest2d, aten.upsample_nearest3d, aten.upsample_bilinear2d,
    aten.upsample_bicubic2d, aten._upsample_bilinear2d_aa, aten._upsample_bicubic2d_aa,
    aten.upsample_linear1d, aten.upsample_trilinear3d, aten._upsample_nearest_exact2d,
    aten.reflection_pad1d, aten.reflection_pad2d, aten.replication_pad1d, aten.replication_pad2d,
    aten.lp_pool2d if hasattr(aten, "lp_pool2d") else aten.avg_pool2d, aten.im2col, aten.col2im,
]


@register(*_SPATIAL)
def spatial_rule(tr: Trace, func, args, kwargs, out) -> None:
    """Window ops over dims 2.. keep channel identity per (batch, channel)."""
    x = args[0]
    lab = tr.label(x)
    if func.__name__ in ("im2col", "col2im"):
        return merge_rule(tr, func, args, kwargs, out)
    nd = lab.dim()
    spatial = list(range(2, nd)) if nd > 2 else []
    if nd == 3 and func.__name__.endswith("2d"):  # unbatched (C, H, W)
        spatial = [1, 2]
    red = _reduce(tr, lab, spatial, str(func))
    for o in _outputs(out):
        if o.dim() == red.dim():
            tr.set_label(o, red.expand(tuple(o.shape)).contiguous())
    name = func.__name__
    if "adaptive_avg_pool2d" in name:
        tr.cost("adaptive_avg_pool2d", 1.0, lab)
    elif name.startswith("upsample_nearest2d"):
        tr.cost("upsample_nearest2d", 1.0, tr.labels[_outputs(out)[0]])
    elif name.startswith("upsample_bilinear2d"):
        tr.cost("upsample_bilinear2d", 4.0, tr.labels[_outputs(out)[0]])


# -- layers with parameters ------------------------------------------------------------------------
@register(aten.convolution, aten._convolution)
def conv_rule(tr: Trace, func, args, kwargs, out) -> None:
    x, w, b = args[0], args[1], args[2]
    transposed, groups = bool(args[6]), int(args[8])
    wname = tr.param_name(w)
    if wname is None:
        return merge_rule(tr, func, args, kwargs, out)
    cin = x.shape[1]
    cout = out.shape[1]
    lin = tr.vector(tr.label(x), 1, str(func))
    o_atoms = tr.fresh(cout, f"{wname}")
    in_dim, out_dim = (0, 1) if transposed else (1, 0)
    ksize = math.prod(w.shape[2:])
    if groups == 1:
        tr.param_dim(w, out_dim, o_atoms)
        tr.param_dim(w, in_dim, lin)
        tr.gate_site(w, in_dim, lin)
        out_lab = _channel_labels(o_atoms, out.shape)
        tr.cost("conv", ksize, out_lab, lin)
    else:
        # Every group of channels stays whole: input group g and output group g are one unit.
        kin, kout = cin // groups, cout // groups
        gin = lin.reshape(groups, kin)
        gout = o_atoms.reshape(groups, kout)
        both = np.concatenate([gin, gout], axis=1)
        tr.reduce_rows(both, str(func))
        if transposed:
            tr.param_dim(w, 0, lin)
            tr.gate_site(w, 0, lin)
        else:
            tr.param_dim(w, 0, o_atoms)
            tr.gate_site(w, 0, o_atoms)
        out_lab = _channel_labels(tr.ds.find(o_atoms), out.shape)
        tr.cost("conv", ksize * (kin if not transposed else kout), out_lab)
    if b is not None:
        tr.param_dim(b, 0, o_atoms)
    tr.set_label(out, out_lab)


def _channel_labels(atoms: np.ndarray, shape: torch.Size) -> torch.Tensor:
    view = [1] * len(shape)
    view[1] = shape[1]
    return torch.from_numpy(np.ascontiguousarray(atoms)).reshape(view).expand(tuple(shape)).contiguous()


def _linear(tr: Trace, func, x: torch.Tensor, w: torch.Tensor, w_in_dim: int, bias, out) -> None:
    lin = tr.vector(tr.label(x), x.dim() - 1, str(func))
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
    out_lab = torch.from_numpy(o_atoms).expand(shape).contiguous()
    tr.cost("linear", 1.0, out_lab, lin)
    tr.set_label(out, out_lab)


@register(aten.t, aten.transpose, aten.permute, aten.numpy_T)
def transpose_rule(tr: Trace, func, args, kwargs, out) -> None:
    w = args[0]
    if tr.param_name(w) is not None and w.dim() == 2 and out.dim() == 2:
        # ``F.linear`` reaches us as ``t(weight)`` then ``addmm``: remember the transposed weight.
        tr.labels[out] = torch.full(tuple(out.shape), -1, dtype=torch.int64)
        tr.param_t[out] = w
        return
    move_rule(tr, func, args, kwargs, out)


@register(aten.addmm)
def addmm_rule(tr: Trace, func, args, kwargs, out) -> None:
    bias, x, wt = args[0], args[1], args[2]
    w = tr.param_t.get(wt)
    if w is None:
        return matmul_rule(tr, func, args[1:], kwargs, out, bias=bias)
    _linear(tr, func, x, w, 1, bias, out)


@register(aten.mm, aten.matmul, aten.bmm)
def mm_rule(tr: Trace, func, args, kwargs, out) -> None:
    w = tr.param_t.get(args[1])
    if w is not None and args[0].dim() == 2:
        return _linear(tr, func, args[0], w, 1, None, out)
    return matmul_rule(tr, func, args, kwargs, out)


@register(aten.linear)
def linear_rule(tr: Trace, func, args, kwargs, out) -> None:
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else kwargs.get("bias")
    if tr.param_name(w) is None:
        return merge_rule(tr, func, args, kwargs, out)
    _linear(tr, func, x, w, 1, b, out)


def matmul_rule(tr: Trace, func, args, kwargs, out, bias=None) -> None:
    """A product of two activations (attention): for now every channel involved becomes one unit."""
    a, b = args[0], args[1]
    k = a.shape[-1]
    tensors = [a, b] + ([bias] if isinstance(bias, torch.Tensor) else [])
    merge_rule(tr, func, tuple(tensors), {}, out)
    tr.cost("matmul", float(k), tr.labels[out])


@register(aten.native_batch_norm, aten._native_batch_norm_legit, aten._native_batch_norm_legit_no_training,
          aten._native_batch_norm_legit_functional, aten.batch_norm, aten.instance_norm)
def batch_norm_rule(tr: Trace, func, args, kwargs, out) -> None:
    x = args[0]
    lab = tr.label(x)
    vec = tr.vector(lab, 1, str(func))
    for p in args[1:5]:
        if isinstance(p, torch.Tensor) and p.dim() == 1 and p.shape[0] == x.shape[1]:
            if tr.param_name(p) is not None:
                tr.param_dim(p, 0, vec)
            else:
                tr.ds.union(vec, tr.vector(tr.label(p), 0, str(func)))
    vec = np.where(vec >= 0, tr.ds.find(np.maximum(vec, 0)), -1)
    out_lab = _channel_labels(vec, x.shape)
    first = _outputs(out)[0]
    tr.set_label(first, out_lab)
    affine = isinstance(args[1], torch.Tensor)
    tr.cost("batch_norm", 2.0 if affine else 1.0, out_lab)


def _norm_over(tr: Trace, func, x: torch.Tensor, dims: list[int], params: tuple, out, coef: float) -> None:
    """Normalisation over ``dims``: every channel inside them becomes one unit (its statistics
    would change if one were removed), and so do the affine parameters."""
    red = _reduce(tr, tr.label(x), dims, str(func))
    out_lab = red.expand(tuple(x.shape)).contiguous()
    row = out_lab.reshape(-1)[:1]
    for p in params:
        if isinstance(p, torch.Tensor):
            plab = tr.label(p).reshape(-1).numpy()
            tr.ds.union(np.broadcast_to(row.numpy(), plab.shape), plab)
    if (row >= 0).any():
        out_lab = torch.from_numpy(np.where(out_lab.numpy() >= 0, tr.ds.find(np.maximum(out_lab.numpy(), 0)), -1))
    tr.set_label(_outputs(out)[0], out_lab)
    tr.cost(func.__name__.split(".")[0].replace("native_", ""), coef, out_lab)


@register(aten.native_layer_norm, aten.layer_norm)
def layer_norm_rule(tr: Trace, func, args, kwargs, out) -> None:
    x, shape = args[0], list(args[1])
    affine = isinstance(args[2], torch.Tensor)
    _norm_over(tr, func, x, list(range(x.dim() - len(shape), x.dim())), args[2:4], out, 5.0 if affine else 4.0)


@register(aten.native_group_norm, aten.group_norm)
def group_norm_rule(tr: Trace, func, args, kwargs, out) -> None:
    x = args[0]
    affine = isinstance(args[1], torch.Tensor)
    _norm_over(tr, func, x, list(range(1, x.dim())), args[1:3], out, 5.0 if affine else 4.0)


@register(aten._scaled_dot_product_flash_attention_for_cpu, aten.scaled_dot_product_attention,
          aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_flash_attention,
          aten._scaled_dot_product_cudnn_attention, aten._scaled_dot_product_attention_math)
def sdpa_rule(tr: Trace, func, args, kwargs, out) -> None:
    q, k, v = args[0], args[1], args[2]
    merge_rule(tr, func, (q, k, v), {}, out)
    # MACs of the two products, as our fvcore handle counts them: 2 * B * H * Nq * Nk * D.
    first = _outputs(out)[0]
    tr.cost("sdpa", float(k.shape[-2]) * (q.shape[-1] + v.shape[-1]) / v.shape[-1], tr.labels[first])


@register(aten.empty, aten.empty_like, aten.zeros, aten.zeros_like, aten.ones, aten.ones_like, aten.full,
          aten.full_like, aten.arange, aten.randn, aten.rand, aten.randn_like, aten.rand_like,
          aten.empty_strided, aten.scalar_tensor, aten.linspace, aten.new_zeros, aten.new_ones,
          aten.new_empty, aten.new_full, aten.eye, aten.tensor, aten._local_scalar_dense,
          aten.sym_size, aten.sym_stride, aten.sym_numel, aten.bernoulli_, aten.uniform_, aten.normal_,
          aten.fill_, aten.zero_, aten.bernoulli, aten.randint, aten.randperm, aten.is_nonzero,
          aten.equal, aten.allclose, aten.isnan, aten.isinf, aten.nonzero)
def fresh_rule(tr: Trace, func, args, kwargs, out) -> None:
    """Factories and in-place refills carry no channel."""
    for o in _outputs(out):
        tr.set_label(o, torch.full(tuple(o.shape), -1, dtype=torch.int64))


EXTRA_POINTWISE = [aten.hardswish, aten.hardswish_, aten.hardsigmoid, aten.hardsigmoid_, aten.silu,
                   aten.silu_, aten.mish, aten.mish_, aten.gelu, aten.gelu_, aten.elu, aten.elu_,
                   aten.leaky_relu, aten.leaky_relu_, aten.hardtanh, aten.hardtanh_, aten.softplus,
                   aten.relu6, aten.prelu, aten._prelu_kernel, aten.where, aten.masked_fill,
                   aten.masked_fill_, aten.clamp, aten.clamp_, aten.threshold, aten.glu]
register(*[op for op in EXTRA_POINTWISE if op is not aten.prelu and op is not aten.glu])(pointwise_rule)
register(aten._prelu_kernel)(pointwise_rule)
