"""The ``op`` kind's gate: a mixed operation over a site's options (DARTS's relaxation), with
PC-DARTS's partial channels and P-DARTS's dropout on skips."""
from __future__ import annotations

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
    which is where the memory goes down."""

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

    def weights(self) -> torch.Tensor:
        return self._values[0]["op"][self.offset:self.offset + self.n]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights().to(device=x.device)
        if self.partial > 1:  # a search's weight and architecture steps alike (PC-DARTS)
            return self._partial(x, w)
        out = None
        for i, op in enumerate(self.ops):
            if not w.requires_grad and float(w[i]) == 0.0:
                continue
            y = self._dropped(i, op(x)) * w[i].to(x.dtype)
            out = y if out is None else out + y
        return out if out is not None else self.ops[0](x) * 0

    def advance(self) -> None:
        """Move the partial-channel window by 1/K (the next search step)."""
        self.turn += 1

    def _dropped(self, i: int, y: torch.Tensor) -> torch.Tensor:
        if self.skip_dropout and i in self.skips:
            return F.dropout(y, self.skip_dropout, self.training)
        return y

    def _partial(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        whole = self.ops[0](x)
        width = whole.shape[1] // self.partial
        start = width * (self.turn % self.partial)
        window = slice(start, start + width)
        mix = whole[:, window] * w[0].to(x.dtype)
        on = (w.detach() != 0).tolist()  # (0: an option a progressive stage dropped)
        for i, op in enumerate(self.ops):
            if i and on[i]:
                mix = mix + self._dropped(i, narrow_output(op, x, window)) * w[i].to(x.dtype)
        return torch.cat([whole[:, :start], mix, whole[:, start + width:]], dim=1)


_CHANNELWISE = (nn.Identity, nn.AvgPool2d, nn.MaxPool2d)


def narrow_output(op: nn.Module, x: torch.Tensor, window: slice) -> torch.Tensor:
    """``op(x)[:, window]``, computing only those output channels where ``op`` allows it: a dense
    convolution (its filters in the window), a sequence (its last module narrowed), an operation
    that acts per channel (on the window of its input); anything else computes every channel."""
    if isinstance(op, nn.Conv2d) and op.groups == 1 and op.padding_mode == "zeros":
        bias = op.bias[window] if op.bias is not None else None
        return F.conv2d(x, op.weight[window], bias, op.stride, op.padding, op.dilation)
    if isinstance(op, nn.Sequential) and len(op):
        return narrow_output(op[-1], op[:-1](x), window)
    if isinstance(op, _CHANNELWISE):
        return op(x[:, window])
    return op(x)[:, window]
