"""The ``op`` kind's gate: a mixed operation over a site's options (DARTS's relaxation), with
PC-DARTS's partial channels and P-DARTS's dropout on skips."""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .candidates import build_option, is_skip, module_like

if TYPE_CHECKING:
    from .op import OpChoice


class MixedOp(nn.Module):
    """``sum_o v_o * o(x)`` over a site's options, ``v`` its slots' gate values; options at 0 are
    not computed when the values carry no gradient (a decision, not a search).

    With ``partial = K > 1`` (PC-DARTS's partial channels, for a search) only 1/K of the output
    channels are the mixture; the others are the original operation's, as if it had been chosen.
    The window of mixed channels moves by 1/K at every :meth:`advance` (the search calls it once
    per step, so that the several forwards of a second-order step see one window), and over K
    steps each channel is searched once (PC-DARTS moves its fixed slice by a channel shuffle,
    which a trained network cannot absorb).  Candidates compute only the window's channels (:func:`narrow_output`),
    which is where the memory goes down.

    A site whose original module has ``partial_bypass(x)`` (a DARTS cell edge) is PC-DARTS's
    edge: every option runs on the window's input channels alone (:func:`window_forward`, the
    option's weights for those channels) and the other channels pass by ``partial_bypass``
    (identity, or max-pooling on a reduction edge).

    Options that are two linear maps in a row (:func:`factor_pair`: the low-rank candidates of a
    1 x 1 convolution or a linear layer) are computed together, as one pair of layers: their
    first layers stacked, their second layers weighted and side by side (:func:`mix_factor_pairs`;
    the same sum, in two launches instead of two per option)."""

    def __init__(self, original: nn.Module, choice: OpChoice, values) -> None:
        super().__init__()
        self._values = [values]
        self.offset, self.n = choice.offset, len(choice.options)
        self.partial, self.turn = 1, 0
        self.skip_dropout = 0.0  # P-DARTS: dropout on the skip option's output during a search
        self.skips = [i for i, o in enumerate(choice.options) if is_skip(choice.site, o)]
        like = module_like(original)
        self.ops = nn.ModuleList([original] + [build_option(choice.site, o).to(**like).train(original.training)
                                               for o in choice.options[1:]])  # (a norm in an option: its mode)
        self.paired = factor_groups(self.ops)

    def weights(self) -> torch.Tensor:
        return self._values[0]["op"][self.offset:self.offset + self.n]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights().to(device=x.device)
        if self.partial > 1:  # a search's weight and architecture steps alike (PC-DARTS)
            return self._partial(x, w)
        on = [True] * self.n if w.requires_grad else (w != 0).tolist()
        out = self._mix(x, w, on)
        return out if out is not None else self.ops[0](x) * 0

    def advance(self) -> None:
        """Move the partial-channel window by 1/K (the next search step)."""
        self.turn += 1

    def _dropped(self, i: int, y: torch.Tensor) -> torch.Tensor:
        if self.skip_dropout and i in self.skips:
            return F.dropout(y, self.skip_dropout, self.training)
        return y

    def _partial(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        bypass = getattr(self.ops[0], "partial_bypass", None)  # PC-DARTS's edges: the rest pass by
        whole = bypass(x) if bypass is not None else self.ops[0](x)
        width = whole.shape[1] // self.partial
        start = width * (self.turn % self.partial)
        window = slice(start, start + width)
        on = (w.detach() != 0).tolist()  # (0: an option a progressive stage dropped)
        if bypass is not None:  # every option on the window's channels alone
            part = x[:, window]
            mix = sum(self._dropped(i, window_forward(op, part, window)) * w[i].to(x.dtype)
                      for i, op in enumerate(self.ops) if on[i])
        else:  # the original's other channels, as if it had been chosen
            mix = whole[:, window] * w[0].to(x.dtype)
            rest = self._mix(x, w, [False] + on[1:], window)
            mix = mix if rest is None else mix + rest
        return torch.cat([whole[:, :start], mix, whole[:, start + width:]], dim=1)

    def _mix(self, x: torch.Tensor, w: torch.Tensor, on: list[bool], window: slice | None = None) -> torch.Tensor | None:
        """``sum_i w_i * op_i(x)`` over the options ``on`` (output channels in ``window`` alone,
        :func:`narrow_output`), factor pairs together; None when none is on."""
        terms, done = [], set()
        for group in self.paired:
            live = [i for i in group if on[i]]
            if len(live) > 1:
                terms.append(mix_factor_pairs([self.ops[i] for i in live], w[live].to(x.dtype), x, window))
                done.update(live)
        for i, op in enumerate(self.ops):
            if on[i] and i not in done:
                if window is not None:
                    y = narrow_output(op, x, window)
                else:  # (the original as the plain network runs it)
                    y = op(x) if i == 0 else forward_touching(op, x)
                terms.append(self._dropped(i, y) * w[i].to(x.dtype))
        return sum(terms[1:], terms[0]) if terms else None


def factor_pair(op: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """``(first, second)`` where ``op`` is two linear maps whose stacks are one map: two linear
    layers, or two dense 1 x 1 convolutions (the second at stride 1 without padding); else None."""
    if not (isinstance(op, nn.Sequential) and len(op) == 2):
        return None
    first, second = op
    if isinstance(first, nn.Linear) and isinstance(second, nn.Linear):
        return first, second
    pointwise = all(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1 and m.dilation == (1, 1)
                    and m.padding_mode == "zeros" for m in (first, second))
    return (first, second) if pointwise and second.stride == (1, 1) and second.padding == (0, 0) else None


def factor_groups(ops: nn.ModuleList) -> list[list[int]]:
    """Indices of the options that are factor pairs on the same input geometry (layer type,
    the first layer's stride and padding), two or more to a group."""
    groups: dict[tuple, list[int]] = {}
    for i, op in enumerate(ops):
        pair = factor_pair(op)
        if pair is not None:
            first = pair[0]
            key = (type(first), getattr(first, "stride", None), getattr(first, "padding", None))
            groups.setdefault(key, []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def mix_factor_pairs(ops: list[nn.Sequential], w: torch.Tensor, x: torch.Tensor,
                     window: slice | None = None) -> torch.Tensor:
    """``sum_i w_i * ops[i](x)`` (output channels in ``window``) for factor pairs on one input
    geometry, as two layers: ``[w_1 B_1 | w_2 B_2 | ...] @ [A_1; A_2; ...] x``."""
    firsts, seconds = zip(*ops)  # (each a two-layer Sequential)
    window = window or slice(None)
    a = torch.cat([m.weight for m in firsts])
    a_bias = None if all(m.bias is None for m in firsts) else \
        torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(len(m.weight)) for m in firsts])
    b = torch.cat([m.weight[window] * wi for m, wi in zip(seconds, w)], dim=1)
    biases = [m.bias[window] * wi for m, wi in zip(seconds, w) if m.bias is not None]
    b_bias = sum(biases[1:], biases[0]) if biases else None
    if isinstance(firsts[0], nn.Linear):
        return F.linear(F.linear(x, a, a_bias), b, b_bias)
    return F.conv2d(F.conv2d(x, a, a_bias, firsts[0].stride, firsts[0].padding), b, b_bias)


_CHANNELWISE = (nn.Identity, nn.AvgPool2d, nn.MaxPool2d)


def narrow_output(op: nn.Module, x: torch.Tensor, window: slice) -> torch.Tensor:
    """``op(x)[:, window]``, computing only those output channels where ``op`` allows it: a dense
    convolution (its filters in the window), a sequence (its last module narrowed), an operation
    that acts per channel (on the window of its input); anything else computes every channel."""
    if type(op) is nn.Conv2d and op.groups == 1 and op.padding_mode == "zeros" and isinstance(op.padding, tuple):
        bias = op.bias[window] if op.bias is not None else None
        return conv2d_touching(x, op.weight[window], bias, op.stride, op.padding, op.dilation)
    if isinstance(op, nn.Sequential) and len(op):
        return narrow_output(op[-1], forward_touching(op[:-1], x), window)
    if isinstance(op, _CHANNELWISE):
        return op(x[:, window])
    return op(x)[:, window]


@functools.lru_cache(maxsize=4096)
def touching_taps(size: int, kernel: int, stride: int, padding: int, dilation: int) -> tuple[int, int]:
    """``(first, last)``: the kernel taps of one spatial dimension that read inside an input of
    ``size`` for some output position (the others only ever read zero padding); cached, since a
    search asks it for the same few shapes at every convolution call."""
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    hit = [j for j in range(kernel)
           if j * dilation - padding <= size - 1 and stride * (out - 1) - padding + j * dilation >= 0]
    return (hit[0], hit[-1]) if hit else (0, kernel - 1)


def conv2d_touching(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding,
                    dilation, groups: int = 1) -> torch.Tensor:
    """``F.conv2d`` with its kernel cut to the taps that can read the input: the same output with
    less work where the map is small (a 3 x 3 kernel at dilation 2 on a 2 x 2 map reads only its
    centre).  Cut only symmetrically, which keeps the output's size and positions."""
    crop, pads = [], []
    for size, k, s, p, d in zip(x.shape[-2:], weight.shape[-2:], stride, padding, dilation):
        first, last = touching_taps(size, k, s, p, d)
        if first != k - 1 - last or p - first * d < 0:
            first, last = 0, k - 1
        crop.append(slice(first, last + 1))
        pads.append(p - first * d)
    return F.conv2d(x, weight[:, :, crop[0], crop[1]], bias, stride, tuple(pads), dilation, groups)


def forward_touching(op: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``op(x)``, its zero-padded ``nn.Conv2d`` layers (alone or in a sequence; not subclasses,
    whose forward may differ) by :func:`conv2d_touching`, without their modules' hooks."""
    if type(op) is nn.Sequential:
        for m in op:
            x = forward_touching(m, x)
        return x
    if type(op) is nn.Conv2d and op.padding_mode == "zeros" and isinstance(op.padding, tuple):
        return conv2d_touching(x, op.weight, op.bias, op.stride, op.padding, op.dilation, op.groups)
    return op(x)


def window_forward(op: nn.Module, x: torch.Tensor, window: slice) -> torch.Tensor:
    """``op`` restricted to the channels in ``window`` (input and output alike), on ``x`` holding
    only those channels: PC-DARTS's 1/K of an edge's channels through an operation built for all
    of them, sharing its weights.  Knows sequences, dense and depthwise convolutions, batch norm
    and operations that act per channel (``channelwise = True`` or a ReLU, pooling, identity); a
    module with ``forward_window(x, window)`` computes its own."""
    if hasattr(op, "forward_window"):
        return op.forward_window(x, window)
    if isinstance(op, nn.Sequential):
        for m in op:
            x = window_forward(m, x, window)
        return x
    if isinstance(op, (*_CHANNELWISE, nn.ReLU)) or getattr(op, "channelwise", False):
        return op(x)
    if isinstance(op, nn.Conv2d) and op.padding_mode == "zeros" and op.groups in (1, op.in_channels):
        depthwise = op.groups == op.in_channels and op.groups > 1
        weight = op.weight[window] if depthwise else op.weight[window, window]
        bias = op.bias[window] if op.bias is not None else None
        return F.conv2d(x, weight, bias, op.stride, op.padding, op.dilation, x.shape[1] if depthwise else 1)
    if isinstance(op, nn.BatchNorm2d):
        return window_batch_norm(op, x, window)
    raise TypeError(f"{type(op).__name__} cannot run on a window of its channels (PC-DARTS partial channels): "
                    "give it forward_window(x, window), or set method.partial_channels=1")


def window_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, window: slice) -> torch.Tensor:
    """``bn`` on the channels in ``window``: their statistics and affine parameters (a training
    step updates those running statistics in place)."""
    stats = bn.running_mean is not None
    use_batch = bn.training or not stats
    return F.batch_norm(x, bn.running_mean[window] if stats else None, bn.running_var[window] if stats else None,
                        bn.weight[window] if bn.affine else None, bn.bias[window] if bn.affine else None,
                        use_batch, 0.1 if bn.momentum is None else bn.momentum, bn.eps)  # (None: torch's default)
