"""``darts``: operation search end to end on a small model, its second-order hypergradient through
mixed ops, P-DARTS's stages and skip cap, and the settings it refuses."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import compressor
from compressor.cli import main
from compressor.export import load_compressed
from compressor.export.flops import fvcore_flops
from compressor.frontend import trace
from compressor.gates import ControlledModel, attach_gates
from compressor.methods.darts_arch import OpLogits
from compressor.train.bilevel import ArchitectureStep
from tests.tiny import TINY_RECIPE, TinyNet


def _recipe(**method):
    return {**TINY_RECIPE, "method": {"name": "darts", "distill_steps": 10, "warmup": 0.0, **method},
            "search": {**TINY_RECIPE["search"], "epochs": 2}, "budget": {"flops": 0.5}}


@pytest.mark.parametrize("selection, partial", [("ilp", 1), ("darts", 1), ("darts", 2), ("random", 1)])
def test_search_lands_in_the_band_and_the_saved_model_is_the_chosen_ops(selection, partial, tmp_path):
    torch.manual_seed(0)
    recipe = _recipe(selection=selection, partial_channels=partial)
    result = compressor.compress(TinyNet(), recipe, out=tmp_path / "run")
    r = result.report
    assert 0.45 - 1e-9 <= r["compressed"]["flops_fraction_fvcore"] <= 0.5
    assert r["onnx"]["max_rel_diff"] <= 1e-4 and set(r["decision"]) == {"op"}
    summary = r["method_summary"]
    assert summary["chosen"] and summary["candidate_loss"]
    assert all(0 <= v["best"] <= v["worst"] for v in summary["candidate_loss"].values())
    if selection == "darts":
        assert "expected_cost" in r["history"]["search"][-1]
        curves = summary["alpha_of_chosen"]  # one probability per search epoch, per site
        assert curves and all(len(ps) == 2 and all(0 <= p <= 1 for p in ps) for ps in curves.values())
        assert (tmp_path / "run" / "alpha.png").stat().st_size > 0
    md = (tmp_path / "run" / "report.md").read_text()
    assert "| site | chosen | distillation loss" in md and "{" not in md
    if partial > 1:
        assert summary["partial_channels"]["sites"] >= 1
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(load_compressed(tmp_path / "run", trust_source=True)(x), result.model(x))


def test_op_search_then_channel_pruning_in_one_recipe(tmp_path):
    """``choices: [op, channels]``: the op search takes sqrt(budget), magnitude channel pruning of
    the op-searched model the rest; the saved model replays both from compressor.json."""
    torch.manual_seed(0)
    recipe = {**_recipe(selection="ilp"), "choices": ["op", "channels"]}
    result = compressor.compress(TinyNet(), recipe, out=tmp_path / "run")
    r = result.report
    x = torch.randn(2, 3, 16, 16)
    full = fvcore_flops(TinyNet().eval(), x[:1])
    assert abs(r["compressed"]["flops_fraction_fvcore"] - fvcore_flops(result.model, x[:1]) / full) < 1e-12
    assert 0.40 <= r["compressed"]["flops_fraction_fvcore"] <= 0.5, r["compressed"]
    assert 0.5 < r["method_summary"]["cost"] <= 0.5 ** 0.5 + 1e-9  # the op search's own share
    assert "channels (then)" in r["choices"] and r["onnx"]["max_rel_diff"] <= 1e-4
    arch = json.loads((tmp_path / "run" / "compressor.json").read_text())
    assert set(arch["decision"]) == {"op"} and set(arch["then"][0]) == {"channels"}
    with torch.no_grad():
        assert torch.equal(load_compressed(tmp_path / "run", trust_source=True)(x), result.model(x))


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(6, 8), torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def test_second_order_hypergradient_through_mixed_ops_matches_double_backward():
    torch.manual_seed(0)
    model = Small().double().eval()
    xt, yt = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    xv, yv = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    space = trace(model, xt[:1], kinds=["op"])
    net = ControlledModel(attach_gates(model, space), OpLogits(space, init_scale=0.5)).double()
    with torch.no_grad():
        net.controller.start.data = net.controller.start.double()
    names = [n for n, _ in net.named_parameters() if n != "controller.alpha"]
    params = dict(net.named_parameters())
    opt = torch.optim.SGD([params[n] for n in names], lr=0.3, momentum=0.9, weight_decay=1e-2)
    F.cross_entropy(net(xt), yt).backward()
    opt.step()
    opt.zero_grad()
    arch = ArchitectureStep([net.controller.alpha], order=2)
    _, (approx,) = arch.second_order_gradient(lambda: F.cross_entropy(net(xv), yv),
                                              lambda: F.cross_entropy(net(xt), yt), opt)
    w = [params[n].detach().clone() for n in names]
    alpha = net.controller.alpha.detach().clone().requires_grad_(True)

    def loss(ws, x, y):
        return F.cross_entropy(functional_call(net, {**dict(zip(names, ws)), "controller.alpha": alpha}, (x,)), y)

    wr = [t.clone().requires_grad_(True) for t in w]
    g = torch.autograd.grad(loss(wr, xt, yt), wr, create_graph=True, allow_unused=True)
    group = opt.param_groups[0]
    unrolled = [t - group["lr"] * ((gi if gi is not None else 0) + group["momentum"] *
                                   opt.state[params[n]].get("momentum_buffer", torch.zeros_like(t))
                                   + group["weight_decay"] * t) for t, gi, n in zip(wr, g, names)]
    (exact,) = torch.autograd.grad(loss(unrolled, xv, yv), alpha)
    assert float((approx - exact).norm() / exact.norm()) < 1e-3
    (first,) = torch.autograd.grad(loss(w, xv, yv), alpha)
    assert float((first - exact).norm() / exact.norm()) > 1e-2  # the test could fail


def test_p_darts_drop_keeps_each_sites_most_probable_options():
    torch.manual_seed(0)
    space = trace(TinyNet().eval(), torch.randn(1, 3, 16, 16), kinds=["op"])
    arch = OpLogits(space)
    with torch.no_grad():
        arch.alpha.normal_()
    before = arch.probabilities().detach()
    arch.drop(2)
    after = arch.probabilities().detach()
    for i, site in enumerate(arch.sites):
        n = len(site.options)
        assert set(after[i].nonzero().flatten().tolist()) == set(before[i, :n].topk(min(2, n)).indices.tolist())
        assert float(after[i].sum()) == pytest.approx(1.0)


def test_p_darts_stages_skip_cap_and_skip_dropout_in_a_run(tmp_path):
    torch.manual_seed(0)
    recipe = _recipe(stages=[2], skip_cap=0, skip_dropout=0.5, cost_weight=0.0)
    recipe["budget"] = {"flops": 0.99}
    result = compressor.compress(TinyNet(), recipe, out=tmp_path / "run")
    chosen = result.report["method_summary"]["chosen"]
    assert "skip" not in chosen.values()
    rows = json.loads((tmp_path / "run" / "report.json").read_text())["history"]["search"]
    assert [r["skip_dropout"] for r in rows] == [0.5, 0.25]  # decaying linearly over the 2 epochs


@pytest.mark.parametrize("setting, message", [
    ("method.candidates=[dw_sep,warp_drive]", "unknown candidate 'warp_drive'"),
    ("method.skip_cap=-1", "method.skip_cap: Input should be greater than or equal to 0"),
    ("method.stages=[3,5]", "stages must shrink"),
    ("method.stage_layers=[3]", "stage_layers: one depth per stage before the last (0 as stages says)"),
    ("method.skip_dropout=[0.1,0.2]", "skip_dropout: one rate per stage (1)"),
    ("method.skip_dropout=1.5", "skip_dropout: rates must lie in [0, 1)"),
    ("choices=[op,depth]", "choices: depth cannot follow the op search"),
    ("method.partial_channels=7", "partial_channels=7 divides the output channels of no convolution site"),
])
def test_bad_settings_are_one_line_and_exit_2(setting, message, tmp_path, capsys):
    assert main(["tests.tiny:TinyNet", "--method", "darts", "--set", setting, "--set", "data.input_size=16",
                 "--check", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_stages_that_rebuild_a_model_which_takes_no_depth_are_one_line(tmp_path, capsys):
    assert main(["tests.tiny:TinyNet", "--method", "darts", "--set", "method.stages=[2]", "--set",
                 "method.stage_layers=[1]", "--set", "data.input_size=16", "--check", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model_args {'layers': 1}" in err, err


def test_a_budget_no_candidate_reaches_is_refused_before_training(tmp_path, capsys):
    assert main(["tests.tiny:TinyNet", "--method", "darts", "--budget-flops", "0.01", "--set", "data.input_size=16",
                 "--check", "--out", str(tmp_path / "x")]) == 2
    assert "cannot be met" in capsys.readouterr().err
