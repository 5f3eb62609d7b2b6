import torch

from compressor.export import export_onnx
from compressor.zoo import create_model


def test_large_models_write_external_data(tmp_path):
    """The >2 GB path, exercised on a small model by lowering the threshold."""
    model = create_model("resnet18").eval()
    x = torch.randn(1, 3, 32, 32)
    diff = export_onnx(model, tmp_path / "m.onnx", x, external_data_above=0)
    assert diff <= 1e-4
    assert (tmp_path / "m.onnx.data").stat().st_size > 40e6
    assert (tmp_path / "m.onnx").stat().st_size < 1e6
