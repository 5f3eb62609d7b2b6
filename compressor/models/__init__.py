"""Models the zoos lack but recipes need (registered by name with :func:`register_model`)."""
from .cifar_resnet import CifarResNet
from .registry import MODELS, register_model
from .wide_resnet import WideResNet

__all__ = ["CifarResNet", "MODELS", "WideResNet", "register_model"]
