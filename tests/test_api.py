"""``compressor.compress`` on a user-built module: budget met, and the returned model, the saved
model and the ONNX file all compute the same function."""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

import compressor
from compressor.export import load_compressed
from compressor.export.flops import fvcore_flops
from tests.tiny import TINY_RECIPE, TinyNet


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    torch.manual_seed(0)
    recipe = {**TINY_RECIPE, "budget": {"flops": 0.5}}
    return compressor.compress(TinyNet(), recipe, out=tmp_path_factory.mktemp("api") / "run")


def test_compress_user_module(result):
    out = result.out
    x = torch.randn(4, 3, 16, 16)
    full = fvcore_flops(TinyNet().eval(), x[:1])
    frac = fvcore_flops(result.model, x[:1]) / full
    assert 0.4 <= frac <= 0.5, frac
    report = json.loads((out / "report.json").read_text())
    assert report["compressed"]["flops_fraction_fvcore"] == frac
    assert abs(report["compressed"]["flops_fraction_cost_model"] - frac) < 1e-9
    assert set(report["latency_ms"]) == {"1", "8"}
    with torch.no_grad():
        want = result.model(x)
        loaded = load_compressed(out, trust_source=True)(x)  # TinyNet: a module:factory source
    assert torch.allclose(want, loaded, atol=1e-6)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(got - want.numpy()).max() <= 1e-4 * max(1.0, float(want.abs().max()))
    for name in ("report.md", "widths.png", "training.png", "recipe.yaml", "logs/search.csv"):
        assert (out / name).exists(), name


def test_eval_and_export_subcommands(result, capsys, tmp_path):
    from compressor.cli import main

    assert main(["eval", str(result.out), "--trust-source"]) == 0
    printed = capsys.readouterr().out
    acc = 100 * result.report["compressed"]["test_accuracy"]
    top5 = 100 * result.report["compressed"]["test_top5"]
    assert f"test accuracy top-1 {acc:.2f}%, top-5 {top5:.2f}%" in printed and "model.onnx: onnxruntime vs PyTorch" in printed
    assert main(["export", str(result.out), "--opset", "18", "--output", str(tmp_path / "m18.onnx"),
                 "--trust-source"]) == 0
    assert (tmp_path / "m18.onnx").stat().st_size > 0
    assert main(["eval", str(tmp_path)]) == 2  # not a run directory
    capsys.readouterr()


def test_eval_and_export_refuse_bad_input(result, capsys, tmp_path):
    from compressor.cli import main
    from tests.images import write_image_folder

    folder = write_image_folder(tmp_path / "three", classes=3, per_class=2, size=16)
    assert main(["eval", str(result.out), "--data", str(folder), "--trust-source"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"compress: error: the data has 3 classes but the model in {result.out} predicts 10"
    assert main(["export", str(result.out), "--opset", "23", "--output", str(tmp_path / "m.onnx")]) == 2
    assert "--opset 23: the ONNX exporter writes opsets 13 to 20" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_data_workers_reach_every_loader(tmp_path, monkeypatch):
    """``data.workers`` is the worker count of every loader a run builds (training, validation,
    test), and a run with worker processes completes."""
    import compressor.train.trainer as trainer_module

    seen = []
    real = trainer_module.DataLoader

    def spy(*args, **kwargs):
        seen.append(kwargs.get("num_workers"))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "DataLoader", spy)
    recipe = {**TINY_RECIPE, "method": {"name": "prune"}, "data": {**TINY_RECIPE["data"], "workers": 2},
              "export": {**TINY_RECIPE["export"], "onnx": False, "latency_repeats": 0}}
    result = compressor.compress(TinyNet(), recipe, out=tmp_path / "run")
    assert result.report["compressed"]["test_accuracy"] > 0
    assert len(seen) >= 3 and set(seen) == {2}, seen
