"""Products of two activations (attention): channels meet per batch index, i.e. per head."""
from __future__ import annotations

import numpy as np
import torch

from ..labels import narrow_repeats
from ..tracer import Trace
from .base import tensor_outputs, aten, merge_rule, register


def _per_batch_index(tr: Trace, tensors: list[torch.Tensor], batch_shape: tuple, op: str) -> torch.Tensor:
    """Join every label of every operand sharing a leading (batch, head) index; return the joined
    unit of each index, shaped ``batch_shape``."""
    nb = int(np.prod(batch_shape)) if batch_shape else 1
    rows = []
    for t in tensors:
        lab = tr.label(t)
        lead = lab.dim() - 2
        if lead < len(batch_shape):
            lab = lab.reshape(*([1] * (len(batch_shape) - lead)), *lab.shape)
        lab = lab.expand(*batch_shape, *lab.shape[-2:])
        lab = narrow_repeats(lab, keep=tuple(range(len(batch_shape))))  # a row needs a repeat once
        rows.append(lab.reshape(nb, -1).numpy())
    roots = tr.reduce_rows(np.concatenate(rows, axis=1), op)
    return torch.from_numpy(roots).reshape(batch_shape)


def _label_by_head(tr: Trace, out: torch.Tensor, heads: torch.Tensor) -> None:
    batch = tuple(heads.shape)
    lab = heads.reshape(*batch, *([1] * (out.dim() - len(batch))))
    tr.set_label(out, lab.expand(tuple(out.shape)))


def activation_product_rule(tr: Trace, func, args, kwargs, out, bias=None) -> None:
    """``A @ B`` of two activations: everything sharing a batch index (a head) becomes one unit,
    which makes attention heads the units of the q/k/v/proj channels."""
    a, b = args[0], args[1]
    batch = tuple(torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])) if a.dim() > 2 and b.dim() > 2 else ()
    if not batch:
        tensors = [a, b] + ([bias] if isinstance(bias, torch.Tensor) else [])
        merge_rule(tr, func, tuple(tensors), {}, out)
    else:
        _label_by_head(tr, out, _per_batch_index(tr, [a, b], batch, str(func)))
    tr.cost("matmul", float(a.shape[-1]), tr.labels[out])


@register(aten._scaled_dot_product_flash_attention_for_cpu, aten.scaled_dot_product_attention,
          aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_flash_attention,
          aten._scaled_dot_product_cudnn_attention, aten._scaled_dot_product_attention_math)
def sdpa_rule(tr: Trace, func, args, kwargs, out) -> None:
    """Fused attention: q, k, v and any additive mask of one (batch, head) index are one unit."""
    q, k, v = args[0], args[1], args[2]
    mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
    first = tensor_outputs(out)[0]
    tensors = [q, k, v]
    if isinstance(mask, torch.Tensor) and mask.is_floating_point():
        tensors.append(mask)
    if q.dim() < 3 or q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2]:
        merge_rule(tr, func, tuple(tensors), {}, out)  # unbatched or grouped-query: not split yet
    else:
        heads = _per_batch_index(tr, tensors, tuple(q.shape[:-2]), str(func))
        for o in tensor_outputs(out):
            if tuple(o.shape[: heads.dim()]) == tuple(heads.shape):
                _label_by_head(tr, o, heads)
    # MACs of the two products, as our fvcore handle counts them: B * H * Nq * Nk * (D + Dv).
    tr.cost("sdpa", float(k.shape[-2]) * (q.shape[-1] + v.shape[-1]) / v.shape[-1], tr.labels[first])
