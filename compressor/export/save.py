"""Save and load compressed models as architecture (JSON) + weights (safetensors): no pickles.

The architecture is the recipe to rebuild the model: the original model's zoo name (or an
importable ``"package.module:factory"``), the input shape it was traced with and the
:class:`~compressor.decision.Decision`.  Loading rebuilds the original, traces it, replays the
decision and loads the weights strictly.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from collections import OrderedDict
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..decision import Decision
from ..space import build_space
from .slice import slice_model

ARCH_FILE = "compressor.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


def save_compressed(model: nn.Module, directory: str | os.PathLike, *, source: str,
                    input_shape: tuple[int, ...], decision: Decision, round_to: int | None = None,
                    source_kwargs: dict[str, Any] | None = None) -> Path:
    """Write ``compressor.json`` and ``model.safetensors`` into ``directory`` (created if needed).

    Args:
        source: a zoo name (``"resnet50"``) or ``"package.module:factory"`` building the original.
        input_shape: the example input shape the space was traced with, batch included.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arch = {"format": FORMAT_VERSION, "source": source, "source_kwargs": source_kwargs or {},
            "input_shape": list(input_shape), "round_to": round_to, "decision": decision.to_dict()}
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    _atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, str(p)))
    _atomic_write(directory / ARCH_FILE, lambda p: Path(p).write_text(json.dumps(arch, indent=2)))
    return directory


def load_compressed(directory: str | os.PathLike, original: nn.Module | None = None) -> nn.Module:
    """Rebuild a model written by :func:`save_compressed` (eval mode, CPU).

    Args:
        original: a freshly built uncompressed model to slice, for sources that cannot be
            rebuilt from their name (a class that needs constructor arguments, or one defined in
            ``__main__``).  Its weights do not matter; it is modified in place.
    """
    directory = Path(directory)
    arch_path = directory / ARCH_FILE
    if not arch_path.exists():
        raise FileNotFoundError(f"{arch_path} not found: not a directory written by save_compressed")
    arch = json.loads(arch_path.read_text())
    if arch.get("format") != FORMAT_VERSION:
        raise ValueError(f"{arch_path}: format {arch.get('format')!r} is not {FORMAT_VERSION}")
    if original is None:
        try:
            original = build_source(arch["source"], arch.get("source_kwargs") or {})
        except Exception as exc:
            raise ValueError(f"{arch_path}: cannot rebuild the original model {arch['source']!r} "
                             f"({type(exc).__name__}: {exc}); build it yourself and pass it: "
                             f"load_compressed(directory, original=model)") from exc
    original = original.eval()
    space = build_space(original, torch.randn(*arch["input_shape"]))  # replaying a decision needs no checks
    model = slice_model(original, space, Decision.from_dict(arch["decision"]), round_to=arch.get("round_to"))
    state = OrderedDict(load_file(str(directory / WEIGHTS_FILE)))
    # Per-module state-dict versions belong to the code, not the weights: reuse the model's own.
    state._metadata = getattr(model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    model.load_state_dict(state, strict=True)
    return model.eval()


def build_source(source: str, kwargs: dict[str, Any]) -> nn.Module:
    """A zoo name or ``package.module:factory`` → a freshly built original model."""
    if ":" in source and not source.startswith(("timm:", "tv:", "torchvision:")):
        module_name, _, attr = source.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
        return factory(**kwargs)
    from ..zoo import create_model

    return create_model(source, **kwargs)


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
