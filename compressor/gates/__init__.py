"""Channel and depth gates over a traced :class:`~compressor.space.Space`."""
from .attach import Gates, attach_gates
from .controlled import ControlledModel, GateController, PartController
from .modules import ChannelMask, DepthGate, GateValues

__all__ = ["ChannelMask", "ControlledModel", "DepthGate", "GateController", "GateValues", "Gates",
           "PartController", "attach_gates"]
