"""``export_onnx``: write an ONNX file and check it in onnxruntime against PyTorch."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

_TWO_GB = 2 * 1024**3


class OnnxCheckError(RuntimeError):
    """onnxruntime's output differs from PyTorch's beyond the tolerance."""


def export_onnx(model: nn.Module, path: str | os.PathLike, example_inputs: tuple | torch.Tensor, *,
                opset: int = 17, check: bool = True, atol: float = 1e-4,
                external_data_above: int = _TWO_GB, dynamic_batch: bool = False) -> float:
    """Export ``model`` (eval mode, on CPU) to ``path`` and return the max abs difference between
    onnxruntime and PyTorch, relative to the output scale.  Models over 2 GB write their weights
    to ``<path>.data`` (ONNX external data; ``external_data_above`` sets the size in bytes).  With
    ``dynamic_batch`` the batch dimension is symbolic.  Raises :class:`OnnxCheckError` above ``atol``."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    names = [f"input{i}" for i in range(len(example_inputs))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example_inputs, str(path), opset_version=opset, dynamo=False,
                          input_names=names,
                          output_names=["output"], do_constant_folding=True,
                          dynamic_axes={n: {0: "batch"} for n in [*names, "output"]} if dynamic_batch else None)
    if size > external_data_above:
        import onnx

        proto = onnx.load(str(path), load_external_data=True)
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    if not check:
        return 0.0
    return check_onnx(model, path, example_inputs, atol=atol)


def check_onnx(model: nn.Module, path: str | os.PathLike, example_inputs: tuple, *, atol: float = 1e-4) -> float:
    """Max abs difference of onnxruntime vs PyTorch over the output scale; raises above ``atol``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds = {i.name: x.detach().cpu().numpy() for i, x in zip(sess.get_inputs(), example_inputs)}
    got = sess.run(None, feeds)[0]
    with torch.no_grad():
        want = model(*example_inputs)
    want = (want[0] if isinstance(want, (tuple, list)) else want).detach().cpu().numpy()
    scale = max(float(np.abs(want).max()), 1e-12)
    diff = float(np.abs(got - want).max()) / scale
    if diff > atol:
        raise OnnxCheckError(f"onnxruntime differs from PyTorch by {diff:.2e} (relative) > {atol:g}")
    return diff
