"""Reductions, softmax-like ops and spatial window ops: channels survive per position."""
from __future__ import annotations


import numpy as np
import torch

from ..labels import narrow_repeats, unlabelled
from ..tracer import Trace

from .base import tensor_outputs, aten, op_name, register

# -- reductions ------------------------------------------------------------------------------------
def reduce_labels(tr: Trace, lab: torch.Tensor, dims: list[int], op: str) -> torch.Tensor:
    """Join labels over ``dims`` for every position of the remaining dims (kept as size-1)."""
    nd = lab.dim()
    dims = sorted({d % nd for d in dims}) if nd else []
    keep = [d for d in range(nd) if d not in dims]
    if not dims:
        return lab
    shape = [lab.shape[d] if d in keep else 1 for d in range(nd)]
    small = narrow_repeats(lab)  # the label repeats along these: the rows do too
    rows, cols = (int(np.prod([small.shape[d] for d in ds] or [1])) for ds in (keep, dims))
    arr = small.permute(keep + dims).reshape(rows, cols).numpy()  # explicit: either may be 0
    roots = tr.reduce_rows(arr, op)
    stored = [small.shape[d] if d in keep else 1 for d in range(nd)]
    return torch.from_numpy(roots).reshape(stored).expand(shape)


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
    if tr.norm_depth:  # the statistics of a masked norm: per row, they carry no channel
        for o in tensor_outputs(out):
            tr.set_label(o, unlabelled(o.shape))
        return
    lab = tr.label(x)
    name = op_name(func)
    pos = 2 if name in ("norm", "linalg_vector_norm") else 1  # norm(x, p, dim), like linalg_vector_norm
    if name in ("max", "min") and len(args) == 1 and "dim" not in kwargs:
        dims = list(range(x.dim()))
    else:
        dims = _dims_arg(args, kwargs, pos, x.dim())
    red = reduce_labels(tr, lab, dims, str(func))
    if func is aten.mean.dim and "adaptive_avg_pool2d" in tr.functions[:1]:
        tr.cost("adaptive_avg_pool2d", 1.0, lab)  # fvcore counts the pooling op it came from
    for o in tensor_outputs(out):
        r = red.reshape(tuple(o.shape)) if red.numel() == o.numel() else red.expand(tuple(o.shape))
        tr.set_label(o, r)


@register(aten._softmax, aten._log_softmax, aten.softmax, aten.log_softmax, aten.cumsum, aten.cumprod,
          aten.sort, aten.topk, aten.argsort)
def along_dim_rule(tr: Trace, func, args, kwargs, out) -> None:
    x = args[0]
    dim = kwargs.get("dim", args[1] if len(args) > 1 and isinstance(args[1], int) else -1)
    if op_name(func) == "topk":  # topk(x, k, dim): args[1] is k
        dim = kwargs.get("dim", args[2] if len(args) > 2 else -1)
    red = reduce_labels(tr, tr.label(x), [dim], str(func))
    for o in tensor_outputs(out):
        if o.dim() == red.dim():
            shape = list(red.shape)
            tr.set_label(o, red.expand(*[o.shape[i] if shape[i] == 1 else shape[i] for i in range(o.dim())]))


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
    # im2col/col2im (F.unfold/F.fold) mix channel and kernel position in one dim: their outputs get
    # no label here, so invariant 2 at trace time decides what may change around them.
    nd = lab.dim()
    spatial = list(range(2, nd)) if nd > 2 else []
    if nd == 3 and op_name(func).endswith("2d"):  # unbatched (C, H, W)
        spatial = [1, 2]
    red = reduce_labels(tr, lab, spatial, str(func))
    for o in tensor_outputs(out):
        if o.dim() == red.dim():
            tr.set_label(o, red.expand(tuple(o.shape)))
    name = op_name(func)
    if "adaptive_avg_pool2d" in name:
        tr.cost("adaptive_avg_pool2d", 1.0, lab)
    elif name.startswith("upsample_nearest2d"):
        tr.cost("upsample_nearest2d", 1.0, tr.labels[tensor_outputs(out)[0]])
    elif name.startswith("upsample_bilinear2d"):
        tr.cost("upsample_bilinear2d", 4.0, tr.labels[tensor_outputs(out)[0]])

