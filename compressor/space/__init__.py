"""Tracing: channel groups, residual blocks and the cost model of any model."""
from .blocks import ResidualBlock
from .cost import CostModel
from .space import ChannelGroup, Space, build_space
from .tracer import TraceError

__all__ = ["ChannelGroup", "CostModel", "ResidualBlock", "Space", "TraceError", "build_space"]
