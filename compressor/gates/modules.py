"""Gate modules of the built-in kinds; all read their values from a shared :class:`GateValues`."""
from __future__ import annotations

import torch
from torch import nn


class GateValues:
    """The current gate value of every slot, keyed by kind (``values["channels"]``: one value
    per flat unit).  Whatever computes them (a method's controller, a fixed 0/1 decision) sets
    them; plain tensors, so values may carry gradients.  A kind whose values are constant ones
    lets its masks skip their work (:meth:`is_ones`).

    ``mix`` (channels only, optional) is a linear map between units, applied to the inputs of
    *contracting* consumers (dense conv/linear): ``(src, dst, value, mixed)`` says that the input
    channel of every unit where ``mixed`` is True becomes the sum of ``value *`` the channels
    ``src`` of the entries whose ``dst`` it is (other channels stay).  TAS's channel-wise
    interpolation is one.
    """

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = dict(sizes)
        self._values = {kind: torch.ones(n) for kind, n in self.sizes.items()}
        self._ones = {kind: True for kind in self.sizes}
        self.mix: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.gate_inputs = True  # let InputGate scale a smaller input instead of the weight

    def __getitem__(self, kind: str) -> torch.Tensor:
        return self._values[kind]

    def __contains__(self, kind: str) -> bool:
        return kind in self._values

    def set(self, kind: str, values: torch.Tensor) -> None:
        if kind not in self.sizes:
            raise KeyError(f"no gates of kind {kind!r} here (kinds: {', '.join(self.sizes)})")
        if values.shape != (self.sizes[kind],):
            raise ValueError(f"{kind}: expected {self.sizes[kind]} gate values, got {tuple(values.shape)}")
        self._values[kind] = values
        self._ones[kind] = not values.requires_grad and bool((values == 1).all())

    def is_ones(self, kind: str) -> bool:
        """True while every value of ``kind`` is a constant 1 (its masks are the identity)."""
        return self._ones.get(kind, True)


class ChannelMask(nn.Module):
    """Parametrization of a consumer weight: multiplies it, along each gated dim, by the value of
    the unit each position belongs to (positions outside any unit are multiplied by 1)."""

    def __init__(self, values: GateValues, dims: list[tuple[int, torch.Tensor]], ndim: int) -> None:
        super().__init__()
        self._values = [values]  # a list, so the holder is not registered as a submodule
        self.dims = [d for d, _ in dims]
        for i, (_, idx) in enumerate(dims):
            self.register_buffer(f"index{i}", idx.long(), persistent=False)
        self.ndim = ndim
        self.bypass = False  # set by an InputGate while it gates the input of this call instead

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self._values[0].is_ones("channels") or self.bypass:
            return weight
        for i, d in enumerate(self.dims):
            weight = weight * self.factor(i, weight, d, self.ndim)
        return weight

    def factor(self, i: int, like: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
        """The gate value of every position of gated dim ``i``, shaped to broadcast along ``dim``
        of an ``ndim``-d tensor (1 for positions of no unit)."""
        units = self._values[0]["channels"].to(device=like.device, dtype=like.dtype)
        ext = torch.cat([units, units.new_ones(1)])
        shape = [1] * ndim
        shape[dim] = -1
        return ext[getattr(self, f"index{i}")].view(shape)


class InputGate:
    """Forward pre- and post-hook of a contracting consumer (dense conv or linear) whose weight
    is gated along its input dim only.  ``W diag(g) x = W (g * x)``: when the input holds fewer
    elements than the weight (deep layers at small resolution), the gates scale the input's
    channels and the weight's :class:`ChannelMask` is bypassed for that call; otherwise the
    weight is masked as usual.  Same values and gradients, less elementwise work."""

    def __init__(self, values: GateValues, mask: ChannelMask, weight_numel: int, dim: int) -> None:
        self._values = values
        self.mask = mask
        self.weight_numel = weight_numel
        self.dim = dim  # channel dim of a batched input

    def pre(self, module: nn.Module, args: tuple):  # noqa: ARG002
        v = self._values
        x = args[0] if args else None
        self.mask.bypass = (x is not None and v.gate_inputs and not v.is_ones("channels")
                            and x.numel() < self.weight_numel)
        if not self.mask.bypass:
            return None
        dim = self.dim if self.dim < 0 or x.dim() == self.mask.ndim else self.dim - 1  # unbatched conv
        return (x * self.mask.factor(0, x, dim % x.dim(), x.dim()), *args[1:])

    def post(self, module: nn.Module, args: tuple, output):  # noqa: ARG002
        self.mask.bypass = False


class ChannelMix:
    """Forward pre-hook of a contracting consumer (dense conv or linear): when ``values.mix`` is
    set, its input channels are recombined by it before the layer runs (``W (A x) = (W A) x``, so
    this is the mix of the weight's input columns, at the cost of the activation, not the weight).
    ``index`` gives the flat unit of every input channel (``num_units``: not a unit)."""

    def __init__(self, values: GateValues, index: torch.Tensor, dim: int) -> None:
        self._values = values
        self.index = index.long()
        self.dim = dim
        n, size = values.sizes["channels"], len(index)
        self.pos = torch.full((n + 1,), size, dtype=torch.long)  # channel of each unit; size = absent
        self.pos[self.index] = torch.arange(size)
        self.pos[n] = size

    def __call__(self, module: nn.Module, args: tuple):  # noqa: ARG002
        mix = self._values.mix
        if mix is None or not args:
            return None
        if self.pos.device != args[0].device:
            self.pos, self.index = self.pos.to(args[0].device), self.index.to(args[0].device)
        return (mix_channels(args[0], self.dim, self.pos, self.index, mix), *args[1:])


def mix_channels(x: torch.Tensor, dim: int, pos: torch.Tensor, index: torch.Tensor, mix) -> torch.Tensor:
    """``x`` with the channels along ``dim`` of mixed units replaced by ``sum value * x[src]``
    (see :class:`GateValues`); ``pos`` maps units to channels, ``index`` channels to units.  A
    zero slot past the end absorbs units not present here."""
    src, dst, value, mixed = (t.to(x.device) for t in mix)
    dim = dim % x.dim()
    size = x.shape[dim]
    here = ((pos[src] < size) & (value != 0)).nonzero().flatten()
    src, dst, value = src[here], dst[here], value[here]
    pad_shape = list(x.shape)
    pad_shape[dim] = 1
    ext = torch.cat([x, x.new_zeros(pad_shape)], dim=dim)
    shape = [1] * x.dim()
    shape[dim] = -1
    stay = torch.cat([~mixed[index], mixed.new_zeros(1)]).to(x.dtype)
    moved = ext.index_select(dim, pos[src]) * value.to(x.dtype).view(shape)
    return (ext * stay.view(shape)).index_add(dim, pos[dst], moved).narrow(dim, 0, size)


class DepthGate(nn.Module):
    """Scales a residual branch by its block's value: ``x + g * f(x)``."""

    def __init__(self, values: GateValues, index: int) -> None:
        super().__init__()
        self._values = [values]
        self.index = index

    def forward(self, branch: torch.Tensor) -> torch.Tensor:
        g = self._values[0]["depth"][self.index].to(device=branch.device, dtype=branch.dtype)
        return branch * g
