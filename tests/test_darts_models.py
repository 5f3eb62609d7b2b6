"""The DARTS family's published cells as zoo models: the published parameter counts, and the
frontend's round trip (trace, cut, slice) on a small network of each cell."""
import pytest
import torch

from compressor.models import GENOTYPES, MODELS, DartsNetwork
from tests.conftest import rel_diff, round_trip

PUBLISHED_M = {"darts_v2": 3.3, "pc_darts": 3.6, "p_darts": 3.4, "darts_v2_imagenet": 4.7}  # papers' tables


def _params(model: torch.nn.Module) -> float:
    aux = sum(p.numel() for p in model.auxiliary.parameters()) if model.auxiliary is not None else 0
    return (sum(p.numel() for p in model.parameters()) - aux) / 1e6  # the papers count without it


@pytest.mark.parametrize("name", list(PUBLISHED_M))
def test_published_genotypes_have_the_published_parameter_counts(name):
    model = MODELS[name](num_classes=1000 if "imagenet" in name else 10, auxiliary=True)
    assert abs(_params(model) / PUBLISHED_M[name] - 1) <= 0.05, (name, _params(model))


def test_auxiliary_head_and_drop_path_act_only_in_training():
    torch.manual_seed(0)
    model = MODELS["darts_v2"](c=8, layers=5, auxiliary=True)
    model.drop_path = 0.3
    x = torch.randn(4, 3, 32, 32)
    logits, aux = model.train()(x)
    assert logits.shape == aux.shape == (4, 10)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # no drop-path, no auxiliary output


@pytest.mark.parametrize("name", list(GENOTYPES))
def test_small_network_of_each_cell_slices_exactly(name):
    model = DartsNetwork(GENOTYPES[name], c=8, layers=5)
    for m in model.modules():  # trained-looking BN statistics, so that cuts change the output
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    space, decision, _, ys, yg = round_trip(model, torch.randn(2, 3, 32, 32), ratio=0.5)
    assert space["channels"].size > 0 and decision.flops(space) < space.cost.flops()
    assert rel_diff(ys, yg) <= 1e-4


def test_the_cell_networks_start_from_their_own_recipe_when_a_run_names_none():
    from compressor.recipe import load_recipe
    from compressor.zoo import model_recipe

    assert {model_recipe(n) for n in [*GENOTYPES, "darts_network"]} == {"darts-eval-cpu"}
    assert model_recipe("resnet18") == model_recipe("darts_search") == model_recipe("timm:darts_v2") == "default"
    own, default = load_recipe("darts-eval-cpu"), load_recipe("default")
    assert own.data.limit_train == 1000 and own.model_dump(exclude={"data"}) == default.model_dump(exclude={"data"})


def test_a_published_cell_network_pruned_end_to_end_reports_its_cells(tmp_path, capsys):
    """``compress darts_v2 --method prune`` (small): the report names and draws both cells once,
    and the ONNX file matches the saved model."""
    import json

    import numpy as np
    import onnxruntime as ort

    from compressor.cli import main
    from compressor.export import load_compressed

    out = tmp_path / "run"
    assert main(["darts_v2", "--method", "prune", "--budget-flops", "0.5", "--set", "model_args.c=8", "--set", "export.round_to=4",
                 "--set", "model_args.layers=5", "--set", "data.limit_train=96", "--set", "data.batch_size=32",
                 "--set", "base.epochs=1", "--set", "finetune.epochs=1", "--set", "export.latency_repeats=0",
                 "--set", "run.progress=false", "--out", str(out)]) == 0
    assert "darts_v2 starts from its own recipe darts-eval-cpu" in capsys.readouterr().out
    report, text = json.loads((out / "report.json").read_text()), (out / "report.md").read_text()
    assert report["cells"]["normal"] == [list(p) for p in GENOTYPES["darts_v2"].normal]
    assert "## Cells" in text and "**reduce cell**: node 2 <- max_pool_3x3(state 0)" in text
    assert text.count("(cells.png)") == 1 and (out / "cells.png").is_file()
    assert 0.4 <= report["compressed"]["flops_fraction_fvcore"] <= 0.5
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = load_compressed(out).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x})[0], want, rtol=1e-3, atol=1e-4)
