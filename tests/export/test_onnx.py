import torch

from compressor.export import export_onnx
from compressor.zoo import create_model


def test_large_models_write_external_data(tmp_path):
    """The >2 GB path, exercised on a small model by lowering the threshold."""
    model = create_model("resnet18").eval()
    x = torch.randn(1, 3, 32, 32)
    done = export_onnx(model, tmp_path / "m.onnx", x, external_data_above=0)
    assert done.max_rel_diff <= 1e-4 and done.exporter == "torchscript"
    assert (tmp_path / "m.onnx.data").stat().st_size > 40e6
    assert (tmp_path / "m.onnx").stat().st_size < 1e6


def test_dynamo_exporter_takes_over_where_torchscript_cannot(tmp_path):
    """aten::rms_norm has no TorchScript symbolic at opset 17: the dynamo exporter writes the
    file (at opset 18), with a symbolic batch, and onnxruntime agrees with PyTorch."""
    import numpy as np
    import onnxruntime as ort

    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.RMSNorm(16), torch.nn.Linear(16, 4)).eval()
    done = export_onnx(model, tmp_path / "m.onnx", torch.randn(2, 8), opset=17, dynamic_batch=True)
    assert done.exporter == "dynamo" and done.opset == 18 and done.max_rel_diff <= 1e-4
    x = torch.randn(5, 8)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert np.allclose(got, model(x).numpy(), atol=1e-5)


def test_a_dynamo_graph_onnxruntime_refuses_is_exported_again_unoptimised(tmp_path, monkeypatch):
    """onnxscript's optimiser has written graphs onnxruntime cannot load (gemma4_vit_167m): the
    exporter then writes the unoptimised graph.  The broken optimiser is simulated here."""
    from compressor.export import onnx as onnx_export

    export = onnx_export._export_dynamo
    calls = []

    def broken_when_optimised(model, inputs, path, *args, optimize=True):
        calls.append(optimize)
        export(model, inputs, path, *args, optimize=optimize)
        if optimize:
            path.write_bytes(b"not an onnx graph")

    monkeypatch.setattr(onnx_export, "_export_dynamo", broken_when_optimised)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.RMSNorm(16), torch.nn.Linear(16, 4)).eval()
    done = export_onnx(model, tmp_path / "m.onnx", torch.randn(2, 8), opset=17)
    assert calls == [True, False]
    assert done.exporter == "dynamo" and done.max_rel_diff <= 1e-4
