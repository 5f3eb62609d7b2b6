"""Which non-finite weights are refused: NaN anywhere and ±inf in a parameter, but not ±inf in a
buffer, where timm keeps clamp bounds that mean "no clamp" (gemma4_vit's ``input_max``)."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from compressor.budget import decision_for_budget
from compressor.export import SavedModelError, load_compressed, save_compressed
from compressor.frontend import trace
from compressor.surgery import slice_model
from compressor.weights import WeightsError, check_finite
from tests.tiny import TinyNet


class ClampedTinyNet(TinyNet):
    """TinyNet whose input is clamped to buffers holding ±inf, as timm's clipped linear layers do."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("input_min", torch.tensor(float("-inf")))
        self.register_buffer("input_max", torch.tensor(float("inf")))

    def forward(self, x):
        return super().forward(torch.clamp(x, self.input_min, self.input_max))


def test_infinite_clamp_bounds_in_buffers_are_accepted():
    check_finite(ClampedTinyNet(), "model")


@pytest.mark.parametrize("where, value", [("input_max", float("nan")), ("stem.0.weight", float("inf")),
                                          ("stem.0.weight", float("nan"))])
def test_nan_anywhere_and_inf_in_a_parameter_are_refused(where, value):
    net = ClampedTinyNet()
    tensor = net.get_parameter(where) if where.endswith("weight") else net.get_buffer(where)
    with torch.no_grad():
        tensor.view(-1)[0] = value
    with pytest.raises(WeightsError, match=f"{where} holds 1 non-finite"):
        check_finite(net, "model")


def _saved(tmp_path, net):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    space = trace(net.eval(), x)
    decision = decision_for_budget(space, 0.5, seed=0)
    sliced = slice_model(net, space, decision).eval()
    save_compressed(sliced, tmp_path, source="tests.tiny:TinyNet", input_shape=(1, 3, 16, 16), decision=decision)
    return sliced, x


def test_a_saved_model_with_infinite_buffers_loads_and_matches(tmp_path):
    torch.manual_seed(0)
    sliced, x = _saved(tmp_path, ClampedTinyNet())
    loaded = load_compressed(tmp_path, original=ClampedTinyNet())
    assert torch.equal(loaded.get_buffer("input_max"), torch.tensor(float("inf")))
    torch.testing.assert_close(loaded(x), sliced(x))


def test_a_saved_model_with_a_nan_buffer_is_refused(tmp_path):
    torch.manual_seed(0)
    _saved(tmp_path, ClampedTinyNet())
    state = load_file(str(tmp_path / "model.safetensors"))
    state["input_max"] = torch.tensor(float("nan"))
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(SavedModelError, match="input_max holds non-finite"):
        load_compressed(tmp_path, original=ClampedTinyNet())
