"""Name -> constructor registry for the project's own models (checked before torchvision/timm),
and the built-in recipe a model starts from when a run names none."""
from __future__ import annotations

from typing import Callable

from torch import nn

MODELS: dict[str, Callable[..., nn.Module]] = {}
RECIPES: dict[str, str] = {}  # model name -> its own built-in recipe (absent: "default")


def register_model(fn: Callable[..., nn.Module] | None = None, *, recipe: str | None = None):
    """Register ``fn`` under its name (as ``@register_model`` or ``@register_model(recipe=...)``).
    ``recipe``: the built-in recipe a run of this model starts from when it names none, for a
    network whose cost the embedded default's schedule does not fit."""
    def add(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS[f.__name__] = f
        if recipe is not None:
            RECIPES[f.__name__] = recipe
        return f

    return add(fn) if fn is not None else add
