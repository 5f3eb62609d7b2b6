"""Save and load compressed models as architecture (JSON) + weights (safetensors): no pickles.

The architecture is the recipe to rebuild the model: the original model's zoo name (or, for a
model given as an ``nn.Module``, its ``"package.module:factory"``), the input shape it was traced
with and the :class:`~compressor.decision.Decision` (format 2: ``{kind: payload}``; format-1 files
still load).  Loading checks the directory first
(:mod:`~compressor.export.manifest`), rebuilds the original, traces it, checks the decision
against that space, replays it and loads the weights strictly.  Code named in the file is run
only when the caller says so (``trust_source=True``).
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..decision import Decision
from ..errors import one_line
from ..space import DEFAULT_KINDS, build_space, kind_names
from .manifest import (ARCH_FILE, FORMAT_VERSION, WEIGHTS_FILE, SavedModel, SavedModelError, check_source,
                       check_tensors, read_saved)
from ..surgery.slice import slice_model
from ..weights import non_finite_count

__all__ = ["ARCH_FILE", "WEIGHTS_FILE", "SavedModelError", "build_source", "load_compressed", "save_compressed"]


def save_compressed(model: nn.Module, directory: str | os.PathLike, *, source: str,
                    input_shape: tuple[int, ...], decision: Decision, round_to: int | None = None,
                    source_kwargs: dict[str, Any] | None = None, then: list[Decision] | None = None) -> Path:
    """Write ``compressor.json`` and ``model.safetensors`` into ``directory`` (created if needed).

    Args:
        source: a zoo name (``"resnet50"``) or ``"package.module:factory"`` building the original.
        input_shape: the example input shape the space was traced with, batch included.
        then: decisions made after ``decision`` on the model it gives, each on the one before's
            result (methods/followup.py); replayed in order on load.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arch = {"format": FORMAT_VERSION, "source": source, "source_kwargs": source_kwargs or {},
            "input_shape": list(input_shape), "round_to": round_to, "decision": decision.to_dict()}
    if then:
        arch["then"] = [d.to_dict() for d in then]
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    _atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, str(p)))
    _atomic_write(directory / ARCH_FILE, lambda p: Path(p).write_text(json.dumps(arch, indent=2)))
    return directory


def load_compressed(directory: str | os.PathLike, original: nn.Module | None = None, *,
                    trust_source: bool = False) -> nn.Module:
    """Rebuild a model written by :func:`save_compressed` (eval mode, CPU).

    Args:
        original: a freshly built uncompressed model to slice, for sources that cannot be
            rebuilt from their name (a class that needs constructor arguments, or one defined in
            ``__main__``).  Its weights do not matter; it is modified in place.
        trust_source: build the original from a ``"package.module:factory"`` source, or with
            constructor arguments ``compress`` does not write.  Off by default: a directory from
            someone else must not run code on load.

    Raises:
        SavedModelError: the directory, its manifest, its decision or its weights are not what
            ``save_compressed`` writes (the message names the file and the field).
    """
    saved = read_saved(directory)
    manifest, arch_path = saved.manifest, saved.arch_path
    if original is None:
        if not trust_source:
            check_source(manifest, arch_path)
        original = build_source(manifest.source, dict(manifest.source_kwargs), arch_path)
    model = _replay(original.eval(), saved.decision, saved, "decision", manifest.round_to)
    for i, step in enumerate(saved.then):
        model = _replay(model, step, saved, f"then[{i}]", None)
    return _load_weights(model, saved)


def _replay(model: nn.Module, decision: Decision, saved: SavedModel, field: str, round_to: int | None) -> nn.Module:
    """``model`` traced and sliced by ``decision`` (made on a checked space; replaying it needs
    only the raw trace)."""
    kinds = [k for k in kind_names() if k in DEFAULT_KINDS or k in decision]
    space = build_space(model, torch.randn(*saved.manifest.input_shape), kinds=kinds)
    try:
        decision.validate(space)
    except ValueError as exc:
        raise SavedModelError(f"{saved.arch_path}: {field}: {exc}") from None
    return slice_model(model, space, decision, round_to=round_to).eval()


def _load_weights(model: nn.Module, saved: SavedModel) -> nn.Module:
    own = model.state_dict()
    check_tensors(saved, own)
    state = OrderedDict(load_file(str(saved.weights_path)))
    params = {name for name, _ in model.named_parameters()}
    for k, t in state.items():
        if non_finite_count(t, buffer=k not in params):
            raise SavedModelError(f"{saved.weights_path}: {k} holds non-finite values (NaN or inf)")
    # Per-module state-dict versions belong to the code, not the weights: reuse the model's own.
    state._metadata = getattr(own, "_metadata", None)  # type: ignore[attr-defined]
    model.load_state_dict(state, strict=True)
    return model.eval()


def build_source(source: str, kwargs: dict[str, Any], where: Path | str = ARCH_FILE) -> nn.Module:
    """A zoo name or ``package.module:factory`` → a freshly built original model.  This runs the
    code ``source`` names: callers check untrusted sources first (:func:`check_source`)."""
    from ..zoo import create_model, import_factory, is_code_reference

    try:
        built = import_factory(source)(**kwargs) if is_code_reference(source) else create_model(source, **kwargs)
    except Exception as exc:  # noqa: BLE001 - whatever the factory raises, the model is not there
        raise SavedModelError(f"{where}: cannot rebuild the original model {source!r} ({one_line(exc, 160)}); "
                              "build it yourself and pass it: load_compressed(directory, original=model)") from None
    if not isinstance(built, nn.Module):
        raise SavedModelError(f"{where}: source {source!r} built a {type(built).__name__}, not an nn.Module")
    return built


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
