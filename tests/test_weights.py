import pytest
import torch
from safetensors.torch import save_file

from compressor.weights import WeightsError, load_weights
from tests.tiny import TinyNet


def test_formats(tmp_path):
    torch.manual_seed(0)
    src = TinyNet()
    state = src.state_dict()
    torch.save(state, tmp_path / "plain.pt")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    for name in ("plain.pt", "ddp.pth", "w.safetensors"):
        dst = TinyNet()
        load_weights(dst, tmp_path / name)
        assert all(torch.equal(a, b) for a, b in zip(dst.state_dict().values(), state.values()))


def test_errors(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_weights(TinyNet(), tmp_path / "none.pt")
    torch.save(TinyNet(num_classes=3).state_dict(), tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="does not fit the model"):
        load_weights(TinyNet(), tmp_path / "other.pt")
    torch.save({"a": 1}, tmp_path / "nontensor.pt")
    with pytest.raises(WeightsError, match="state_dict of tensors"):
        load_weights(TinyNet(), tmp_path / "nontensor.pt")
