"""The built-in kinds of choice, registered on import in this order: ``channels``, ``depth``,
``kernel``, ``op`` (see :mod:`compressor.space.kinds` for the contract a new kind follows)."""
from .channels import ChannelChoices, ChannelKind
from .depth import DepthChoices, DepthKind
from .kernel import KernelChoices, KernelKind
from .op import OpChoices, OpKind

__all__ = ["ChannelChoices", "ChannelKind", "DepthChoices", "DepthKind", "KernelChoices", "KernelKind", "OpChoices",
           "OpKind"]
