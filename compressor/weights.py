"""Load trained weights of an original model from a file, without unpickling code.

Accepted: a ``state_dict`` saved with ``torch.save`` (optionally nested under ``state_dict``,
``model`` or ``model_state_dict``, as timm/torchvision training scripts write them), or a
safetensors file.  Keys may carry a ``module.`` (DDP) prefix.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .errors import one_line


class WeightsError(ValueError):
    """The weights file is missing, unreadable or does not fit the model; the message says which."""


def load_weights(model: nn.Module, path: str | os.PathLike, num_classes: int | None = None) -> None:
    """Load ``path`` into ``model`` strictly (in place).  With ``num_classes`` (the data's), a file
    whose head was trained for another number of classes gets an error that says so."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch/safetensors raise many kinds for a bad file
        raise WeightsError(f"weights file {path} is corrupt or not a state_dict "
                           f"({one_line(exc, 120)})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} does not hold a state_dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if num_classes is not None:
        own = model.state_dict()
        for k, v in state.items():
            mine = own.get(k)
            if mine is not None and v.dim() and mine.shape[0] == num_classes and v.shape[0] != num_classes \
                    and v.shape[1:] == mine.shape[1:]:
                raise WeightsError(f"weights file {path} has a {v.shape[0]}-class head ({k}) but the data has "
                                   f"{num_classes} classes; use data with the same classes, or start from "
                                   "pretrained weights with a new head: --pretrained FILE")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        raise WeightsError(f"weights file {path} does not fit the model: {' '.join(first[:2])[:300]}") from None


def non_finite_count(t: torch.Tensor, *, buffer: bool) -> int:
    """How many entries of ``t`` make no sense as a weight: NaN anywhere, ±inf in a parameter.  A
    buffer may hold ±inf on purpose (timm's clipped linear layers keep ``input_max = inf`` for
    "no clamp"), so only NaN counts there."""
    if not t.is_floating_point() or t.device.type == "meta":
        return 0
    bad = torch.isnan(t) if buffer else ~torch.isfinite(t)
    return int(bad.sum())


def check_finite(model: nn.Module, what: str) -> None:
    """Refuse a model whose parameters hold NaN or inf, or whose buffers hold NaN, naming the first
    such tensor: nothing trained, measured or pruned from it would mean anything."""
    named = [(n, t, False) for n, t in model.named_parameters()] + [(n, t, True) for n, t in model.named_buffers()]
    for name, t, buffer in named:
        if bad := non_finite_count(t, buffer=buffer):
            raise WeightsError(f"{what}: {name} holds {bad} non-finite value(s) (NaN or inf) of {t.numel()}")
