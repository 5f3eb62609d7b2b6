"""Tracing: one forward pass finds what can change in any model; the kinds of choice, the
:class:`Space` that holds them and its cost model."""
from .blocks import ResidualBlock
from .cost import CostModel
from .grouping import ChannelGroup
from .kinds import ChoiceKind, ChoiceSet, get_kind, kind_names, register_kind
from .space import DEFAULT_KINDS, Space, TraceFindings, build_space
from .tracer import TraceError

__all__ = ["ChannelGroup", "ChoiceKind", "ChoiceSet", "CostModel", "DEFAULT_KINDS", "ResidualBlock", "Space",
           "TraceError", "TraceFindings", "build_space", "get_kind", "kind_names", "register_kind"]
