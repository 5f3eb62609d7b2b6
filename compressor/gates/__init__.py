"""Channel and depth gates that attach to and detach from a live model."""
from .attach import Gates, attach_gates
from .modules import ChannelMask, DepthGate

__all__ = ["ChannelMask", "DepthGate", "Gates", "attach_gates"]
