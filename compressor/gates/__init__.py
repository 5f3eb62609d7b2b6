"""Gates over a traced :class:`~compressor.space.Space`: every kind attaches its own (channel
masks, depth gates...) through one :class:`Gates` handle, and reads its values from one
:class:`GateValues` keyed by kind."""
from .attach import Gates, attach_gates
from .controlled import MIX, ControlledModel, GateController, PartController
from .modules import ChannelMask, DepthGate, GateValues

__all__ = ["MIX", "ChannelMask", "ControlledModel", "DepthGate", "GateController", "GateValues", "Gates",
           "PartController", "attach_gates"]
