"""A site's options that end in a linear map over channels, computed as one map.

Many candidates end in a dense 1 x 1 convolution at stride 1 or a linear layer (their *tail*):
``dw_sep`` (a depthwise convolution, then the tail), ``low_rank`` (two such maps), ``pointwise``
(a 1 x 1 convolution at the site's stride: a strided view of the input, then itself at stride 1).
Their weighted sum is one tail over their heads' outputs side by side,

    sum_i w_i T_i(h_i(x)) + w_i b_i  =  [w_1 T_1 | w_2 T_2 | ...] [h_1(x); h_2(x); ...] + sum_i w_i b_i,

one launch of the tail for all of them, and their heads merge where they can:

* dense heads of one geometry (the low-rank candidates' first layers) stack into one layer;
* heads that are the input itself or a strided view of it (a lone 1 x 1 convolution) share it,
  their tails summed;
* any other head (``dw_sep``'s depthwise convolution) runs on its own.  (Merging ``dw_sep``'s two
  depthwise heads into one 5 x 5 depthwise convolution of twice the channels was slower on CPU:
  about 10% more per resnet50 search step, measured.)

The same sum as option by option, to float rounding (tests/choices/test_op.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


def _is_tail(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return True
    return (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (1, 1) and m.padding == (0, 0)
            and m.groups == 1 and m.padding_mode == "zeros")


def split_tail(op: nn.Module) -> tuple[nn.Module | tuple[int, int] | None, nn.Module] | None:
    """``(head, tail)`` with ``op(x) == tail(head(x))`` and ``tail`` a linear map over channels:
    ``head`` a module, a stride (a strided view of the input) or None (the input itself); None
    where ``op`` has no such tail."""
    if isinstance(op, nn.Sequential) and len(op) >= 2 and _is_tail(op[-1]):
        return (op[0] if len(op) == 2 else op[:-1]), op[-1]
    if isinstance(op, nn.Linear):
        return None, op
    if (isinstance(op, nn.Conv2d) and op.kernel_size == (1, 1) and op.padding == (0, 0) and op.groups == 1
            and op.padding_mode == "zeros"):
        return (None if op.stride == (1, 1) else op.stride), op
    return None


def _head_key(head) -> tuple:
    """Heads with one key merge into one computation."""
    if head is None or isinstance(head, tuple):
        return ("view", head)
    if isinstance(head, nn.Linear):
        return ("dense", nn.Linear)
    if isinstance(head, nn.Conv2d) and head.padding_mode == "zeros" and head.groups == 1:
        return ("dense", nn.Conv2d, head.kernel_size, head.stride, head.padding, head.dilation)
    return ("module", id(head))


@dataclass
class HeadPart:
    """Heads computed together: ``members`` (option indices) and their heads and tails."""

    key: tuple
    members: list[int] = field(default_factory=list)
    heads: list = field(default_factory=list)
    tails: list[nn.Module] = field(default_factory=list)

    def run(self, x: torch.Tensor, take: list[int], w: torch.Tensor,
            window: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h, T)``: the heads' outputs of members ``take`` (positions in ``members``) and the
        weighted tail columns that read them (output channels in ``window``)."""
        tails = [self.tails[j].weight[window].flatten(1) * w[self.members[j]] for j in take]
        heads = [self.heads[j] for j in take]
        kind = self.key[0]
        if kind == "view":
            stride = self.key[1]
            return (x if stride is None else x[..., ::stride[0], ::stride[1]]), sum(tails[1:], tails[0])
        if kind == "dense":
            return _stacked(heads, x), torch.cat(tails, dim=1)
        return heads[0](x), tails[0]


def _bias(layers: list[nn.Module]) -> torch.Tensor | None:
    if all(m.bias is None for m in layers):
        return None
    return torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.weight.shape[0]) for m in layers])


def _stacked(heads: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Dense heads of one geometry as one layer (their outputs one after the other)."""
    weight, bias, first = torch.cat([m.weight for m in heads]), _bias(heads), heads[0]
    if isinstance(first, nn.Linear):
        return F.linear(x, weight, bias)
    return F.conv2d(x, weight, bias, first.stride, first.padding, first.dilation)


@dataclass
class SharedTail:
    """Options of one site whose tails are one kind of map (1 x 1 convolutions or linear layers),
    their heads in parts; :meth:`forward` is their weighted sum."""

    members: list[int]
    parts: list[HeadPart]
    linear: bool

    def forward(self, x: torch.Tensor, live: list[int], w: torch.Tensor, window: slice | None = None) -> torch.Tensor:
        """``sum_{i in live} w_i * op_i(x)`` (output channels in ``window``) over members ``live``."""
        window = window or slice(None)
        heads, columns, biases = [], [], []
        for part in self.parts:
            take = [j for j, i in enumerate(part.members) if i in live]
            if take:
                h, cols = part.run(x, take, w, window)
                heads.append(h)
                columns.append(cols)
                biases += [part.tails[j].bias[window] * w[part.members[j]] for j in take
                           if part.tails[j].bias is not None]
        h = heads[0] if len(heads) == 1 else torch.cat(heads, dim=-1 if self.linear else 1)
        weight = columns[0] if len(columns) == 1 else torch.cat(columns, dim=1)
        bias = sum(biases[1:], biases[0]) if biases else None
        if self.linear:
            return F.linear(h, weight, bias)
        return F.conv2d(h, weight[..., None, None], bias)


def shared_tails(ops: list[nn.Module], exclude: set[int] = frozenset()) -> list[SharedTail]:
    """The options of ``ops`` (indices not in ``exclude``) that end in a 1 x 1 convolution at
    stride 1, and those that end in a linear layer: one :class:`SharedTail` for each kind with
    two or more of them."""
    groups: dict[bool, dict[tuple, HeadPart]] = {False: {}, True: {}}
    for i, op in enumerate(ops):
        split = None if i in exclude else split_tail(op)
        if split is None:
            continue
        head, tail = split
        key = _head_key(head)
        part = groups[isinstance(tail, nn.Linear)].setdefault(key, HeadPart(key))
        part.members.append(i)
        part.heads.append(head)
        part.tails.append(tail)
    out = []
    for linear, parts in groups.items():
        members = sorted(i for p in parts.values() for i in p.members)
        if len(members) > 1:
            out.append(SharedTail(members, list(parts.values()), linear))
    return out
