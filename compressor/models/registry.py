"""Name -> constructor registry for the project's own models (checked before torchvision/timm)."""
from __future__ import annotations

from typing import Callable

from torch import nn

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    MODELS[fn.__name__] = fn
    return fn
