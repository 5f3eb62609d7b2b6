"""``ControlledModel``: a gated network plus the module that computes its gate values.

The controller (an ``nn.Module`` owning the method's logits) runs at the start of every forward
and writes the values of every kind into the gates, so the whole thing is one ``nn.Module``:
DDP synchronises the logits' gradients with the weights', ``state_dict`` holds both, and
autocast covers both.
"""
from __future__ import annotations

import torch
from torch import nn

from .attach import Gates

MIX = "mix"  # the key of a channel mix in a controller's output (see GateValues.mix)


class GateController(nn.Module):
    """Computes the gate values: ``forward() -> {kind: values}`` (a kind left out, or None, keeps
    its values), optionally with a channel mix under ``"mix"`` (:class:`~compressor.gates.GateValues`)."""

    def forward(self) -> dict[str, torch.Tensor | None]:  # pragma: no cover - interface
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
        values = dict(self.controller())
        self.gates.values.mix = values.pop(MIX, None)
        self.gates.set(values)
        return self.net(*args, **kwargs)

    def release(self) -> nn.Module:
        """Remove every gate and return the plain network with its trained weights."""
        self.gates.model = self.net
        self.gates.values.mix = None
        return self.gates.remove()


class PartController(GateController):
    """The gate values of a sub-network (:func:`~compressor.surgery.subnet.sub_network`): those of
    ``whole``'s units that the part kept (``units[i]`` = whole unit of part unit i); every other
    kind as is."""

    def __init__(self, whole: GateController, units: torch.Tensor) -> None:
        super().__init__()
        self.whole = whole
        self.register_buffer("units", units.long(), persistent=False)

    def forward(self) -> dict[str, torch.Tensor | None]:
        values = dict(self.whole())
        if values.get(MIX) is not None:
            raise NotImplementedError("a unit mix cannot be restricted to a sub-network")
        units = values.get("channels")
        if units is not None:
            values["channels"] = units[self.units.to(units.device)]
        return values
