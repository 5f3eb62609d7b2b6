"""``ControlledModel``: a gated network plus the module that computes its gate values.

The controller (an ``nn.Module`` owning the method's logits) runs at the start of every forward
and writes unit and block values into the gates, so the whole thing is one ``nn.Module``:
DDP synchronises the logits' gradients with the weights', ``state_dict`` holds both, and
autocast covers both.
"""
from __future__ import annotations

import torch
from torch import nn

from .attach import Gates


class GateController(nn.Module):
    """Computes ``(unit_values, block_values)``, either of which may be None (left unchanged),
    optionally followed by a unit ``mix`` (see :class:`~compressor.gates.GateValues`)."""

    def forward(self) -> tuple:  # pragma: no cover - interface
        raise NotImplementedError


class ControlledModel(nn.Module):
    def __init__(self, gates: Gates, controller: GateController) -> None:
        super().__init__()
        self.net = gates.model
        self.controller = controller
        self._gates = [gates]  # not a submodule: it only points at modules already inside net

    @property
    def gates(self) -> Gates:
        return self._gates[0]

    def forward(self, *args, **kwargs):
        values = self.controller()
        self.gates.set(units=values[0], blocks=values[1])
        self.gates.values.mix = values[2] if len(values) > 2 else None
        return self.net(*args, **kwargs)

    def release(self) -> nn.Module:
        """Remove every gate and return the plain network with its trained weights."""
        self.gates.model = self.net
        self.gates.values.mix = None
        return self.gates.remove()


class PartController(GateController):
    """The gate values of a sub-network (:func:`~compressor.export.subnet.sub_network`): those of
    ``whole``'s units that the part kept (``units[i]`` = whole unit of part unit i); blocks as is."""

    def __init__(self, whole: GateController, units: torch.Tensor) -> None:
        super().__init__()
        self.whole = whole
        self.register_buffer("units", units.long(), persistent=False)

    def forward(self) -> tuple:
        values = self.whole()
        if len(values) > 2 and values[2] is not None:
            raise NotImplementedError("a unit mix cannot be restricted to a sub-network")
        units = values[0][self.units.to(values[0].device)] if values[0] is not None else None
        return units, values[1]
