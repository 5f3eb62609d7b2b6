"""A saved run directory read as hostile input: ``compressor.json`` and ``model.safetensors``
are checked before anything is built from them (DESIGN §4, invariant 7).

``read_saved(directory)`` parses ``compressor.json`` against a strict schema, bounds its input
shape (and the memory tracing at that shape would take against what is free), and checks that
``model.safetensors`` is a complete safetensors file.  Every failure is one
:class:`SavedModelError` line naming the file and the field.  Which code a manifest may name is
decided by :func:`check_source`: a zoo name with the constructor arguments ``compress`` writes,
unless the caller trusts the directory.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..decision import Decision
from ..machine import MAX_SIDE, input_shape_problem

ARCH_FILE = "compressor.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 2  # 1: written before kinds of choice were plug-ins; still read

UNTRUSTED_KWARGS = {"num_classes": (1, 1_000_000), "img_size": (8, MAX_SIDE)}  # what compress writes


class SavedModelError(ValueError):
    """A saved model directory that cannot be loaded as it is; the message names the file and field."""


class UntrustedSourceError(SavedModelError):
    """The manifest names code to build the original, and the caller did not say to trust it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Format1Decision(_Strict):
    """Format 1's decision: kept unit indices per channel group, removed residual blocks."""

    groups: dict[str, list[int]] = Field(default_factory=dict)
    removed_blocks: list[str] = Field(default_factory=list)


class Manifest(_Strict):
    """``compressor.json``: how to rebuild the original, the shape it was traced at, the decision
    (format 2: ``{kind: payload}``, checked by each kind; format 1: groups and removed blocks)."""

    format: Literal[1, 2]
    source: str = Field(min_length=1, max_length=500)
    source_kwargs: dict[str, Any] = Field(default_factory=dict)  # any JSON; check_source bounds it
    input_shape: list[int] = Field(min_length=2, max_length=5)
    round_to: int | None = Field(None, ge=1, le=4096)
    decision: dict[str, Any]
    then: list[dict[str, Any]] = Field(default_factory=list, max_length=8)  # decisions on the decided model, in order


@dataclass(frozen=True)
class SavedModel:
    """A run directory that passed every check that needs no model: its manifest, its decision
    and the ``name -> shape`` of every tensor in its weights file."""

    directory: Path
    manifest: Manifest
    decision: Decision
    tensors: dict[str, list[int]]
    then: tuple[Decision, ...] = ()  # pruning replayed on the decided model, in order

    @property
    def arch_path(self) -> Path:
        return self.directory / ARCH_FILE

    @property
    def weights_path(self) -> Path:
        return self.directory / WEIGHTS_FILE


def read_saved(directory: str | os.PathLike) -> SavedModel:
    """Check ``directory``'s manifest and weights file; raise :class:`SavedModelError` on the first
    problem (one line: file, field, why)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SavedModelError(f"{directory} is not a directory")
    manifest = read_manifest(directory / ARCH_FILE)
    check_input_shape(manifest.input_shape, directory / ARCH_FILE)
    try:
        if manifest.format == 1:
            Format1Decision.model_validate(manifest.decision)
    except ValidationError as exc:
        raise SavedModelError(f"{directory / ARCH_FILE}: decision.{describe_validation(exc)}") from None
    decision = _decision(manifest.decision, directory / ARCH_FILE, "decision")
    then = tuple(_decision(d, directory / ARCH_FILE, f"then[{i}]") for i, d in enumerate(manifest.then))
    return SavedModel(directory, manifest, decision, read_weights_header(directory / WEIGHTS_FILE), then)


def _decision(payload: dict[str, Any], path: Path, field: str) -> Decision:
    try:
        return Decision.from_dict(payload)
    except ValidationError as exc:
        raise SavedModelError(f"{path}: {field}.{describe_validation(exc)}") from None
    except (ValueError, TypeError) as exc:
        raise SavedModelError(f"{path}: {field}: {exc}") from None


def read_manifest(path: Path) -> Manifest:
    """``compressor.json`` parsed strictly (types are not coerced; unknown keys are errors)."""
    if not path.is_file():
        raise SavedModelError(f"{path} not found: not a directory written by `compress` or save_compressed")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SavedModelError(f"{path}: cannot be read ({type(exc).__name__})") from None
    try:
        return Manifest.model_validate_json(text)
    except ValidationError as exc:
        raise SavedModelError(f"{path}: {describe_validation(exc)}") from None


def describe_validation(exc: ValidationError) -> str:
    """The first error of a pydantic validation as ``field: why`` (with how many more there are)."""
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<file>"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    elif first["type"] == "json_invalid":
        msg = f"not valid JSON ({first.get('ctx', {}).get('error', msg)})"
    elif first["type"] != "missing" and "input" in first:
        msg = f"{msg}, got {repr(first['input'])[:60]}"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{loc}: {msg}{more}"


def check_input_shape(shape: list[int], path: Path) -> None:
    """The input shape is one this machine can trace at (:func:`~compressor.machine.input_shape_problem`)."""
    problem = input_shape_problem(shape)
    if problem:
        raise SavedModelError(f"{path}: input_shape {shape}: {problem}")


def read_weights_header(path: Path) -> dict[str, list[int]]:
    """``name -> shape`` of every tensor in a safetensors file, read from its header; the library
    checks the header's length, JSON and offsets against the file's size."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise SavedModelError(f"{path} not found: the directory holds no weights")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise SavedModelError(f"{path}: not a complete safetensors file ({str(exc).strip()[:160]})") from None


def check_source(manifest: Manifest, path: Path) -> None:
    """Refuse a manifest that would have code run to rebuild its original: a source that is not a
    zoo name, or constructor arguments other than the ones ``compress`` writes."""
    from ..zoo import UnknownModelError, is_code_reference, model_source

    source = manifest.source
    if is_code_reference(source):
        raise UntrustedSourceError(
            f"{path}: source {source!r} names code to run, not a zoo model; run it only if you trust whoever "
            "wrote the directory: --trust-source (CLI), load_compressed(..., trust_source=True), or build the "
            "original yourself: load_compressed(..., original=model)")
    try:
        origin, bare = model_source(source)
    except UnknownModelError as exc:
        raise SavedModelError(f"{path}: source: {exc}") from None
    for key, value in manifest.source_kwargs.items():
        if key not in UNTRUSTED_KWARGS and origin == "compressor" and _own_argument(bare, key, value, path):
            continue
        if key not in UNTRUSTED_KWARGS:
            raise UntrustedSourceError(
                f"{path}: source_kwargs.{key}: not a constructor argument compress writes ("
                f"{', '.join(UNTRUSTED_KWARGS)}); pass --trust-source / trust_source=True if you trust the directory")
        low, high = UNTRUSTED_KWARGS[key]
        if type(value) is not int or not low <= value <= high:
            raise SavedModelError(f"{path}: source_kwargs.{key}: must be an integer in [{low}, {high}], "
                                  f"got {value!r}")


def check_tensors(saved: SavedModel, expected: dict[str, Any]) -> None:
    """The weights file holds exactly the tensors of the rebuilt model, with their shapes."""
    have = saved.tensors
    missing = [k for k in expected if k not in have]
    extra = [k for k in have if k not in expected]
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which the model does not"
        count = len(missing) + len(extra)
        raise SavedModelError(f"{saved.weights_path}: {what} ({count} tensor name(s) differ from the model "
                              f"{ARCH_FILE} rebuilds)")
    for k, t in expected.items():
        if list(t.shape) != have[k]:
            raise SavedModelError(f"{saved.weights_path}: {k} has shape {have[k]}, the model {ARCH_FILE} "
                                  f"rebuilds has {list(t.shape)}")


OWN_ARGUMENT_LIMITS = {int: 100_000, str: 10_000}  # largest int, longest str in an own model's arguments


def _own_argument(model: str, key: str, value: Any, path: Path) -> bool:
    """Whether ``key`` is an argument of our own registered ``model``'s constructor (its code is
    ours: plain numbers, flags and strings it parses as data, e.g. darts_network's genotype);
    raises :class:`SavedModelError` for a value that is not such a plain one, or is out of bounds."""
    import inspect

    from ..models import MODELS

    if key not in inspect.signature(MODELS[model]).parameters:
        return False
    kind = type(value)
    plain = kind is bool or (kind is float and math.isfinite(value)) or \
        (kind in OWN_ARGUMENT_LIMITS and (abs(value) if kind is int else len(value)) <= OWN_ARGUMENT_LIMITS[kind])
    if not plain:
        raise SavedModelError(f"{path}: source_kwargs.{key}: must be a number, a flag or a short string, "
                              f"got {str(value)[:60]!r}")
    return True
