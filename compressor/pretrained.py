"""Pretrained originals through timm's and torchvision's own loading mechanisms.

``load_pretrained(name, num_classes)`` builds a zoo model with the weights its library knows:
from the library's cache when present (``~/.cache/huggingface`` and ``~/.cache/torch/hub`` by
default), downloaded otherwise, or from a local ``file`` (timm's ``pretrained_cfg_overlay=
dict(file=...)``, loaded strictly; for torchvision the file is served to ``get_model(weights=...)`` as its cache
entry).  ``HF_HUB_OFFLINE=1`` forbids downloads for both libraries.  When the data has another number of classes than the weights' head, the head is replaced
by a freshly initialised one (timm's ``reset_classifier``; for torchvision the last layer producing
the weights' class scores).  Every failure is a :class:`PretrainedError` that says what is
missing and how to provide it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from .errors import one_line
from .weights import WeightsError


class PretrainedError(WeightsError):
    """No pretrained weights for the model, or they could not be found or loaded."""


@dataclass(frozen=True)
class PretrainedInfo:
    """Where the weights came from and what was done to the head (for the report)."""

    source: str  # "timm" or "torchvision"
    weights: str  # the weights' tag or enum name
    location: str  # cache, file path or URL
    pretrained_classes: int
    head_replaced: bool

    def describe(self) -> str:
        head = f", its {self.pretrained_classes}-class head replaced by a new one" if self.head_replaced else ""
        return f"{self.source} weights {self.weights} from {self.location}{head}"


def offline() -> bool:
    """``HF_HUB_OFFLINE=1`` (the switch timm's hub downloads honour) also keeps torchvision's
    weights to the cache: no download is tried."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def load_pretrained(name: str, num_classes: int, file: str | os.PathLike | None = None,
                    **kwargs) -> tuple[nn.Module, PretrainedInfo]:
    """``name`` with its library's pretrained weights and a ``num_classes``-way head."""
    from .zoo import model_source

    source, bare = model_source(name)
    if file is not None and not Path(file).is_file():
        raise PretrainedError(f"pretrained weights file {file} not found")
    if source == "timm":
        return _timm(bare, num_classes, file, **kwargs)
    if source == "torchvision":
        return _torchvision(bare, num_classes, file, **kwargs)
    raise PretrainedError(f"{name} has no pretrained weights (neither timm nor torchvision provides it); "
                          "train it here (drop --pretrained) or pass trained weights with --weights")


def _timm(name: str, num_classes: int, file, **kwargs) -> tuple[nn.Module, PretrainedInfo]:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (file or cfg.url or cfg.hf_hub_id):
        raise PretrainedError(f"timm has no pretrained weights for {name}; list the ones it has with "
                              "timm.list_models(pretrained=True), or drop --pretrained")
    tag = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    overlay = {"file": str(file)} if file else None
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # no retry-by-retry lines offline: one error says it all
    classes = int(cfg.num_classes or 0)
    try:  # strict load at the weights' own head, then timm's own head swap (a wrong file cannot pass)
        model = timm.create_model(name, pretrained=True, num_classes=classes or num_classes,
                                  pretrained_cfg_overlay=overlay, **kwargs)
        if classes and classes != num_classes:
            model.reset_classifier(num_classes)
    except Exception as exc:  # noqa: BLE001 - hub, url, file and state-dict errors all mean "not loaded"
        if file:
            raise PretrainedError(f"pretrained weights file {file} could not be loaded into timm's {tag} "
                                  f"({one_line(exc)})") from None
        where = f"Hugging Face hub {cfg.hf_hub_id}" if cfg.hf_hub_id else cfg.url
        raise PretrainedError(f"pretrained weights for {tag} are not in the cache and could not be downloaded "
                              f"from {where} ({one_line(exc)}); download them where there is network "
                              "(same cache: HF_HOME / TORCH_HOME) or pass the file: --pretrained FILE") from None
    finally:
        hub_log.setLevel(level)
    location = str(file) if file else (f"hf-hub:{cfg.hf_hub_id}" if cfg.hf_hub_id else str(cfg.url))
    return model, PretrainedInfo("timm", tag, location, classes, classes != num_classes)


@contextlib.contextmanager
def _hub_dir(path: str):
    old = torch.hub.get_dir()
    torch.hub.set_dir(path)
    try:
        yield
    finally:
        torch.hub.set_dir(old)


def _torchvision(name: str, num_classes: int, file, **kwargs) -> tuple[nn.Module, PretrainedInfo]:
    import torchvision

    from .zoo import torchvision_kwargs

    kwargs = {k: v for k, v in torchvision_kwargs(name).items() if k != "init_weights"} | kwargs
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise PretrainedError(f"torchvision has no pretrained weights for {name}; drop --pretrained") from None
    classes = len(weights.meta["categories"])
    filename = os.path.basename(urlparse(weights.url).path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    label = f"{type(weights).__name__}.{weights.name}"
    if not file and offline() and not cached.is_file():
        raise PretrainedError(f"pretrained weights {label} are not in the cache ({cached}) and HF_HUB_OFFLINE=1 "
                              f"forbids downloading {weights.url}; put the file there (TORCH_HOME moves the "
                              "cache) or pass it: --pretrained FILE")
    held = Path(file) if file else cached
    if held.is_file():  # torchvision unpickles it fully; it must hold nothing but tensors
        _tensors_only(held, label)
    try:
        if file:  # torchvision's own loading, with the file as its cache entry
            with tempfile.TemporaryDirectory() as hub:
                (Path(hub) / "checkpoints").mkdir()
                os.symlink(Path(file).resolve(), Path(hub) / "checkpoints" / filename)
                with _hub_dir(hub):
                    model = torchvision.models.get_model(name, weights=weights, **kwargs)
        else:
            model = torchvision.models.get_model(name, weights=weights, **kwargs)
    except Exception as exc:  # noqa: BLE001 - url, pickle and state-dict errors all mean "not loaded"
        if file:
            raise PretrainedError(f"pretrained weights file {file} could not be loaded as torchvision's {label} "
                                  f"({one_line(exc)})") from None
        raise PretrainedError(f"pretrained weights {label} are not in the cache ({cached}) and could not be "
                              f"downloaded from {weights.url} ({one_line(exc)}); download them where there "
                              "is network (same cache: TORCH_HOME) or pass the file: --pretrained FILE") from None
    if num_classes != classes:
        replace_head(model, classes, num_classes)
    location = str(file) if file else str(cached)
    return model, PretrainedInfo("torchvision", label, location, classes, num_classes != classes)


def _tensors_only(path: Path, label: str) -> None:
    """torchvision loads its weights files with ``torch.load(weights_only=False)``, which runs any
    code a pickle names: read ``path`` first with the unpickler that allows tensors and containers
    only, and refuse it if that fails."""
    try:
        torch.load(path, map_location="meta", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any refusal of the safe unpickler
        raise PretrainedError(f"pretrained weights file {path} for torchvision's {label} is not a plain state_dict "
                              f"of tensors ({one_line(exc, 120)}); refusing to unpickle it") from None


def replace_head(model: nn.Module, old_classes: int, num_classes: int) -> str:
    """Replace the last Linear/1x1-conv layer producing ``old_classes`` outputs by a freshly
    initialised one producing ``num_classes``; returns its name."""
    found = [(n, m) for n, m in model.named_modules()
             if (isinstance(m, nn.Linear) and m.out_features == old_classes)
             or (isinstance(m, nn.Conv2d) and m.out_channels == old_classes and m.groups == 1)]
    if not found:
        raise PretrainedError(f"no layer of {type(model).__name__} produces the weights' {old_classes} class "
                              f"scores, so the head cannot be replaced for {num_classes} classes")
    name, old = found[-1]
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding,
                        old.dilation, bias=old.bias is not None)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], new)
    return name
