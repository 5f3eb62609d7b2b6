"""``export_onnx``: write an ONNX file and check it in onnxruntime against PyTorch.

The TorchScript exporter is tried first (fast, and what most deployments were validated with);
where it cannot export an op (``aten::rms_norm``, ``col2im``, a Python bool traced into a tensor
argument...), the dynamo exporter (``torch.export`` + onnxscript) is tried at opset >= 18.  The
result says which one wrote the file.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..errors import one_line

_TWO_GB = 2 * 1024**3


DYNAMO_MIN_OPSET = 18


class OnnxCheckError(RuntimeError):
    """onnxruntime's output differs from PyTorch's beyond the tolerance."""


class OnnxExportError(RuntimeError):
    """Neither exporter could write the model; the message gives both reasons."""


class OnnxExport(NamedTuple):
    """What :func:`export_onnx` did: onnxruntime vs PyTorch (max abs difference over the output
    scale; 0.0 when not checked), the exporter that wrote the file and its opset."""

    max_rel_diff: float
    exporter: str  # "torchscript" or "dynamo"
    opset: int


def export_onnx(model: nn.Module, path: str | os.PathLike, example_inputs: tuple | torch.Tensor, *,
                opset: int = 17, check: bool = True, atol: float = 1e-4,
                external_data_above: int = _TWO_GB, dynamic_batch: bool = False) -> OnnxExport:
    """Export ``model`` (eval mode, on CPU) to ``path``, check it in onnxruntime, and say how
    (:class:`OnnxExport`).  Models over 2 GB write their weights to ``<path>.data`` (ONNX external
    data; ``external_data_above`` sets the size in bytes).  With ``dynamic_batch`` the batch
    dimension is symbolic.  Raises :class:`OnnxCheckError` above ``atol`` and
    :class:`OnnxExportError` when neither exporter can write the model."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    names = [f"input{i}" for i in range(len(example_inputs))]
    axes = {n: {0: "batch"} for n in [*names, "output"]} if dynamic_batch else None
    exporter, used_opset = "torchscript", opset
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, example_inputs, str(path), opset_version=opset, dynamo=False,
                              input_names=names, output_names=["output"], do_constant_folding=True,
                              dynamic_axes=axes)
    except Exception as first:  # noqa: BLE001 - any TorchScript failure: try the other exporter
        exporter, used_opset = "dynamo", max(opset, DYNAMO_MIN_OPSET)
        try:
            _export_dynamo(model, example_inputs, path, used_opset, names, axes)
            if _load_error(path) is not None:
                # onnxscript's graph optimiser has written graphs onnxruntime refuses (gemma4_vit:
                # "Node input 'mul_2_min_1' is not a graph input..."): the plain graph then
                _export_dynamo(model, example_inputs, path, used_opset, names, axes, optimize=False)
        except Exception as second:  # noqa: BLE001
            raise OnnxExportError(f"ONNX export failed with the TorchScript exporter ({one_line(first)}) "
                                  f"and with the dynamo exporter ({one_line(second)})") from None
    if size > external_data_above:
        import onnx

        proto = onnx.load(str(path), load_external_data=True)
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    if not check:
        return OnnxExport(0.0, exporter, used_opset)
    return OnnxExport(check_onnx(model, path, example_inputs, atol=atol), exporter, used_opset)


def _session(path: str | os.PathLike):
    """An onnxruntime CPU session of the file at ``path``, its log kept quiet."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _load_error(path: Path) -> str | None:
    """Why onnxruntime cannot load the file at ``path`` (None if it can)."""
    try:
        _session(path)
    except Exception as exc:  # noqa: BLE001 - any refusal is the answer
        return one_line(exc)
    return None


def _export_dynamo(model: nn.Module, example_inputs: tuple, path: Path, opset: int, names: list[str],
                   axes: dict | None, optimize: bool = True) -> None:
    """``torch.onnx.export(dynamo=True)``, its progress lines and optimiser chatter kept quiet."""
    quiet = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, example_inputs, str(path), dynamo=True, opset_version=opset,
                              input_names=names, output_names=["output"], dynamic_axes=axes, verbose=False,
                              optimize=optimize)
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)


def check_onnx(model: nn.Module, path: str | os.PathLike, example_inputs: tuple, *, atol: float = 1e-4) -> float:
    """Max abs difference of onnxruntime vs PyTorch over the output scale; raises above ``atol``."""
    sess = _session(path)
    feeds = {i.name: x.detach().cpu().numpy() for i, x in zip(sess.get_inputs(), example_inputs)}
    got = sess.run(None, feeds)[0]
    with torch.no_grad():
        want = model(*example_inputs)
    if isinstance(want, dict):  # flattened in order by the exporters
        want = next(iter(want.values()))
    want = (want[0] if isinstance(want, (tuple, list)) else want).detach().cpu().numpy()
    scale = max(float(np.abs(want).max()), 1e-12)
    diff = float(np.abs(got - want).max()) / scale
    if diff > atol:
        raise OnnxCheckError(f"onnxruntime differs from PyTorch by {diff:.2e} (relative) > {atol:g}")
    return diff


class OnnxFileError(ValueError):
    """An ONNX file that reaches outside its directory or needs code onnxruntime does not ship."""


STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


def check_onnx_file(path: str | os.PathLike) -> None:
    """Before an ONNX file someone else wrote is loaded: its external data (weights stored beside
    it) must be plain files in its own directory, and its operators must come from the standard
    domains (a custom domain needs a library of native code registered with onnxruntime)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several kinds for a damaged file
        raise OnnxFileError(f"{path}: not a readable ONNX model ({one_line(exc, 120)})") from None
    for tensor in _all_tensors(proto.graph):
        if not uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if not location or Path(location).name != location or location in (".", ".."):
            raise OnnxFileError(f"{path}: tensor {tensor.name} keeps its data at {location!r}, outside the "
                                "model's directory")
    for opset in proto.opset_import:
        if opset.domain not in STANDARD_DOMAINS:
            raise OnnxFileError(f"{path}: operators of domain {opset.domain!r} need a custom operator library")


def _all_tensors(graph):
    """Every tensor a graph stores: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_tensors(sub)
