"""DESIGN §4 invariants 1-5, each on resnet18, mobilenet_v3_small, densenet121, a timm ViT and
convnext at small input sizes."""
from pathlib import Path

import pytest
import torch

from compressor.checks import randomise_zero_weights
from compressor.gates.outputs import gated_output
from compressor.budget import decision_for_budget
from compressor.export import export_onnx, load_compressed, save_compressed
from compressor.surgery import slice_model
from compressor.export.flops import fvcore_flops
from compressor.frontend import trace
from compressor.zoo import create_model
from tests.conftest import rel_diff

MODELS = {
    "resnet18": ({}, 64),
    "mobilenet_v3_small": ({}, 64),
    "densenet121": ({}, 64),
    "vit_tiny_patch16_224": ({"img_size": 64}, 64),
    "convnext_atto": ({}, 64),
}


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    name = request.param
    kwargs, size = MODELS[name]
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    randomise_zero_weights(model, 0)  # zero-initialised heads would make every comparison vacuous
    x = torch.randn(2, 3, size, size)
    space = trace(model, x[:1])
    decision = decision_for_budget(space, 0.5, seed=1)
    sliced = slice_model(model, space, decision).eval()
    return name, kwargs, model, x, space, decision, sliced


def test_gates_at_one_reproduce_the_model(case):
    _, _, model, x, space, _, _ = case
    with torch.no_grad():
        y = model(x)
    assert float((gated_output(model, space, None, x) - y).abs().max()) <= 1e-5


def test_sliced_equals_hard_gated(case):
    _, _, model, x, space, decision, sliced = case
    assert decision.flops(space) <= 0.55 * float(space.cost.flops())
    with torch.no_grad():
        ys = sliced(x)
    assert ys.shape == model(x).shape and float(ys.abs().max()) > 0
    assert rel_diff(ys, gated_output(model, space, decision, x)) <= 1e-4


def test_cost_model_matches_fvcore_and_param_count(case):
    _, _, model, x, space, decision, sliced = case
    assert float(space.cost.flops()) == pytest.approx(fvcore_flops(model, x[:1]), rel=0.01)
    assert decision.flops(space) == pytest.approx(fvcore_flops(sliced, x[:1]), rel=0.01)
    assert round(decision.params(space)) == sum(p.numel() for p in sliced.parameters())


def test_onnx_matches_pytorch(case, tmp_path: Path):
    _, _, _, x, _, _, sliced = case
    assert export_onnx(sliced, tmp_path / "m.onnx", x).max_rel_diff <= 1e-4


def test_save_load_is_exact_and_needs_no_pickle(case, tmp_path: Path):
    name, kwargs, _, x, _, decision, sliced = case
    save_compressed(sliced, tmp_path, source=name, source_kwargs=kwargs, input_shape=(1, *x.shape[1:]),
                    decision=decision)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compressor.json", "model.safetensors"]
    loaded = load_compressed(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(x), sliced(x))


class NeedsWidth(torch.nn.Module):
    """A user model whose constructor needs an argument the saved source does not record."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3), torch.nn.ReLU(), torch.nn.Conv2d(width, width, 3))
        self.head = torch.nn.Linear(width, 4)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def test_load_takes_the_original_when_its_source_cannot_be_rebuilt(tmp_path: Path):
    torch.manual_seed(0)
    model, x = NeedsWidth(12).eval(), torch.randn(2, 3, 12, 12)
    space = trace(model, x[:1])
    decision = decision_for_budget(space, 0.5, seed=0)
    sliced = slice_model(model, space, decision)
    save_compressed(sliced, tmp_path, source=f"{__name__}:NeedsWidth", input_shape=(1, 3, 12, 12), decision=decision)
    with pytest.raises(ValueError, match=r"names code to run.*original=model"):
        load_compressed(tmp_path)
    with pytest.raises(ValueError, match=r"cannot rebuild the original model .*NeedsWidth.*original=model"):
        load_compressed(tmp_path, trust_source=True)
    with torch.no_grad():
        assert torch.equal(load_compressed(tmp_path, original=NeedsWidth(12))(x), sliced(x))
