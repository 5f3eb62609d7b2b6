"""Model names to constructors (torchvision classification models, then timm), with input sizes."""
from __future__ import annotations

import difflib
import fnmatch
import importlib
from functools import lru_cache
from typing import Callable

import torch
from torch import nn


class UnknownModelError(ValueError):
    """The name is neither a torchvision classification model nor a timm model."""


@lru_cache(maxsize=1)
def _torchvision_names() -> tuple[str, ...]:
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


@lru_cache(maxsize=1)
def _timm_names() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


def list_models(filter: str = "*") -> list[str]:  # noqa: A002 - mirrors timm.list_models
    """Every known model name matching the glob ``filter`` (torchvision names first)."""
    from .models import MODELS

    names = list(MODELS) + list(_torchvision_names()) + [n for n in _timm_names() if n not in set(_torchvision_names())]
    return [n for n in names if fnmatch.fnmatch(n, filter)]


def is_code_reference(name: str) -> bool:
    """``"package.module:factory"``: a name that imports code, not a zoo model (``timm:``,
    ``tv:`` and ``torchvision:`` prefixes pick a zoo)."""
    return ":" in name and not name.startswith(("timm:", "tv:", "torchvision:"))


def import_factory(reference: str) -> Callable[..., nn.Module]:
    """The callable a ``"package.module:factory"`` reference names (imports the module: only for
    references the user wrote, or trusts).  Raises ImportError or AttributeError."""
    module_name, _, attr = reference.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _split(name: str) -> tuple[str | None, str]:
    for prefix in ("torchvision:", "tv:", "timm:"):
        if name.startswith(prefix):
            return prefix.rstrip(":").replace("tv", "torchvision"), name[len(prefix):]
    return None, name


def model_recipe(name: str) -> str:
    """The built-in recipe a run of ``name`` starts from when it names none: the one the model
    registered (:func:`~compressor.models.register_model`), else ``default``."""
    from .models import RECIPES

    source, bare = _split(name)
    return RECIPES.get(bare, "default") if source is None else "default"


def _is_torchvision_classifier(name: str) -> bool:
    """Fast check (no listing): a registered builder living in ``torchvision.models.<file>``."""
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except (ValueError, KeyError):
        return False
    return builder.__module__.count(".") == 2


def model_source(name: str) -> tuple[str, str]:
    """(source, bare name) that :func:`create_model` builds ``name`` from: ``compressor`` (our
    own models), ``torchvision`` or ``timm``; raises :class:`UnknownModelError` with close matches."""
    from .models import MODELS

    source, bare = _split(name)
    if source is None and bare in MODELS:
        return "compressor", bare
    if source in (None, "torchvision") and _is_torchvision_classifier(bare):
        return "torchvision", bare
    if source in (None, "timm") and bare.partition(".")[0] in set(_timm_names()):  # "resnet18.a1_in1k": a tag
        return "timm", bare
    close = difflib.get_close_matches(bare, list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownModelError(f"unknown model {name!r}{hint}")


def data_config(model: str | nn.Module) -> dict:
    """How the model's pretrained weights expect images: ``size``, ``crop_pct``, ``interpolation``,
    ``mean``, ``std`` (timm's pretrained config, or torchvision's default weights' transforms);
    empty for a model without pretrained weights.  ``model`` is a zoo name, or a built model
    carrying timm's ``pretrained_cfg``."""
    from timm.data import resolve_data_config

    if isinstance(model, nn.Module):
        cfg = getattr(model, "pretrained_cfg", None)
        return _timm_data_config(resolve_data_config(model=model)) if cfg else {}
    source, bare = model_source(model)
    if source == "timm":
        import timm

        found = timm.models.get_pretrained_cfg(bare)
        return _timm_data_config(resolve_data_config(pretrained_cfg=found.to_dict())) if found else {}
    if source == "torchvision":
        import torchvision

        try:
            weights = torchvision.models.get_model_weights(bare).DEFAULT
        except (ValueError, KeyError, AttributeError):
            return {}
        t = weights.transforms()
        crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
        return {"size": crop, "crop_pct": crop / resize, "interpolation": t.interpolation.value,
                "mean": tuple(t.mean), "std": tuple(t.std)}
    return {}


def torchvision_kwargs(name: str) -> dict:
    """Constructor defaults for torchvision models whose own defaults do not suit us: auxiliary
    heads off (one output), and googlenet/inception's explicit weight init."""
    return {"aux_logits": False, "init_weights": True} if name.startswith(("googlenet", "inception")) else {}


def _timm_data_config(d: dict) -> dict:
    return {"size": int(d["input_size"][-1]), "crop_pct": float(d["crop_pct"]),
            "interpolation": str(d["interpolation"]), "mean": tuple(d["mean"]), "std": tuple(d["std"])}


def create_model(name: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    """Build ``name`` with random weights (``torchvision:``/``timm:`` prefixes pick the source).

    Raises :class:`UnknownModelError` with close matches when the name is unknown.
    """
    from .models import MODELS

    source, bare = model_source(name)
    extra = dict(kwargs)
    if num_classes is not None:
        extra["num_classes"] = num_classes
    if source == "compressor":
        return MODELS[bare](**extra)
    if source == "torchvision":
        import torchvision

        return torchvision.models.get_model(bare, weights=None, **(torchvision_kwargs(bare) | extra))
    import timm

    return timm.create_model(bare, pretrained=False, **extra)


def create_model_for_size(name: str, size: int | None, **kwargs) -> tuple[nn.Module, dict]:
    """Build ``name`` for ``size``-pixel inputs: timm models with a fixed patch grid are built with
    ``img_size=size`` when they accept it.  Returns the model and every kwarg used (``kwargs``
    such as ``num_classes`` included), which rebuild it with :func:`create_model`."""
    if size is not None:
        source, bare = _split(name)
        if source != "torchvision" and (source == "timm" or not _is_torchvision_classifier(bare)):
            try:
                return create_model(name, img_size=size, **kwargs), {"img_size": size, **kwargs}
            except TypeError:
                pass
    return create_model(name, **kwargs), dict(kwargs)


def input_size(name: str, model: nn.Module | None = None) -> tuple[int, int, int]:
    """(C, H, W) the model expects by default: timm's pretrained config, else 224 (299 for inception)."""
    source, bare = _split(name)
    if model is not None and getattr(model, "pretrained_cfg", None):
        size = model.pretrained_cfg.get("input_size")
        if size:
            return tuple(size)  # type: ignore[return-value]
    if bare.startswith("inception"):
        return (3, 299, 299)
    return (3, 224, 224)


def example_input(name: str, model: nn.Module | None = None, batch: int = 1, size: int | None = None) -> torch.Tensor:
    c, h, w = input_size(name, model)
    if size is not None:
        h = w = size
    return torch.randn(batch, c, h, w)
