"""INT8 export: onnxruntime's static quantization of model.onnx, calibrated, compared with fp32,
and the run's report section."""
import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import compressor
from compressor.export import export_onnx
from compressor.export.quantize import best_per_channel, cpu_int8_support, predictions, quantize_int8
from tests.tiny import TINY_RECIPE, TinyNet


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    path = tmp_path_factory.mktemp("int8") / "model.onnx"
    export_onnx(_net(), path, torch.randn(1, 3, 16, 16), dynamic_batch=True)
    return path


def _images(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((16, 3, 16, 16)).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_int8_file_is_quantized_and_close_to_fp32(fp32, tmp_path, method):
    out = quantize_int8(fp32, tmp_path / "int8.onnx", _images(4, 0), method=method)
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    test = _images(8, 1)
    a, b = predictions(fp32, test), predictions(out, test)
    assert len(a) == 128 and (a == b).mean() >= 0.8, (method, (a == b).mean())


def test_per_channel_auto_keeps_the_better_file(fp32, tmp_path):
    images = _images(4, 2)
    labels = predictions(fp32, images)  # the fp32 model's own answers as held-out labels
    labels[::3] = (labels[::3] + 1) % 10  # some the fp32 model gets wrong, so scores differ from 1
    out = tmp_path / "auto.onnx"
    chosen, scores = best_per_channel(fp32, out, _images(4, 0), (images, labels), method="minmax")
    kept = float((predictions(out, images) == labels).mean())
    assert kept == max(scores.values()) and kept == scores["per_channel" if chosen else "per_tensor"]


def test_unknown_calibration_refused(fp32, tmp_path):
    with pytest.raises(ValueError, match="calibration must be one of"):
        quantize_int8(fp32, tmp_path / "x.onnx", _images(1, 0), method="kl")


def test_cpu_int8_support_is_a_known_answer():
    assert cpu_int8_support() == "unknown" or cpu_int8_support().startswith(("VNNI (", "no VNNI"))


def test_run_writes_int8_and_reports_it(tmp_path):
    torch.manual_seed(0)
    recipe = {**TINY_RECIPE, "budget": {"flops": 0.5},
              "export": {**TINY_RECIPE["export"], "quantize": "int8", "calibration_images": 64}}
    result = compressor.compress(TinyNet(), recipe, out=tmp_path / "run")
    report = json.loads((result.out / "report.json").read_text())
    q = report["int8"]
    assert (result.out / "model.int8.onnx").exists() and q["calibration_images"] == 64
    assert set(q["held_out_accuracy"]) == {"per_tensor", "per_channel"}
    # the fp32 file's test accuracy in onnxruntime is PyTorch's on the compressed model
    assert abs(q["test"]["fp32_accuracy"] - report["compressed"]["test_accuracy"]) <= 1 / q["test"]["images"]
    assert q["test"]["agreement"] >= 0.9, q
    assert all("int8" in v and v["int8"] > 0 for v in report["latency_ms"].values())
    md = (result.out / "report.md").read_text()
    assert "## INT8" in md and "agree on the top-1 class" in md


def test_bench_times_original_fp32_and_int8(tmp_path, capsys):
    from compressor.cli import main

    torch.manual_seed(0)
    recipe = {**TINY_RECIPE, "budget": {"flops": 0.5},
              "export": {**TINY_RECIPE["export"], "quantize": "int8", "per_channel": False, "latency_repeats": 0}}
    out = compressor.compress(TinyNet(), recipe, out=tmp_path / "run").out
    assert main(["bench", str(out), "--batch", "1,2", "--repeats", "4", "--trust-source"]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2 and all(len(r.split("|")) == 2 + 6 for r in rows), printed
    assert all(float(v) > 0 for r in rows for v in r.strip("| ").split(" | ")[1:]), printed
    (out / "model.onnx").unlink()
    assert main(["bench", str(out), "--trust-source"]) == 2
    assert "no model.onnx to time" in capsys.readouterr().err
