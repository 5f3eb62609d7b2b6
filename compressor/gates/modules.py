"""The two gate modules.  Both read their values from a shared :class:`GateValues`."""
from __future__ import annotations

import torch
from torch import nn


class GateValues:
    """One value per flat unit and one per block; whatever computes them (a method, a fixed 0/1
    decision) assigns ``units``/``blocks``.  Plain tensors, so values may carry gradients."""

    def __init__(self, num_units: int, num_blocks: int) -> None:
        self.units = torch.ones(num_units)
        self.blocks = torch.ones(num_blocks)


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

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        units = self._values[0].units.to(device=weight.device, dtype=weight.dtype)
        ext = torch.cat([units, units.new_ones(1)])
        for i, d in enumerate(self.dims):
            idx = getattr(self, f"index{i}")
            shape = [1] * self.ndim
            shape[d] = -1
            weight = weight * ext[idx].view(shape)
        return weight


class DepthGate(nn.Module):
    """Scales a residual branch by its block's value: ``x + g * f(x)``."""

    def __init__(self, values: GateValues, index: int) -> None:
        super().__init__()
        self._values = [values]
        self.index = index

    def forward(self, branch: torch.Tensor) -> torch.Tensor:
        g = self._values[0].blocks[self.index].to(device=branch.device, dtype=branch.dtype)
        return branch * g
