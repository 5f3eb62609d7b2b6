"""The built-in kinds of choice, registered on import: ``channels``, ``depth`` (see
:mod:`compressor.space.kinds` for the contract a new kind follows)."""
from .channels import ChannelChoices, ChannelKind
from .depth import DepthChoices, DepthKind

__all__ = ["ChannelChoices", "ChannelKind", "DepthChoices", "DepthKind"]
