"""Latency budgets: the layer table (measured in onnxruntime, cached), the differentiable cost it
makes, and a whole run whose measured latency ratio meets the budget."""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compressor
from compressor.budget import BudgetError, decide
from compressor.cli import main
from compressor.latency import LatencyTable, Settings, attach_latency, find_units
from compressor.prepare import prepare
from compressor.recipe import RecipeError, load_recipe
from tests.tiny import TINY_RECIPE, TinyNet

SIZE = 16


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _dw_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                         nn.ReLU(), nn.Conv2d(16, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 10)).eval()


def _wide_net() -> nn.Module:
    """Wide enough that widths rounded to a 16-channel block can still halve."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
                         nn.Conv2d(128, 128, 3, stride=2, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))


def test_units_are_the_dense_depthwise_and_linear_layers():
    net, x = _dw_net(), torch.randn(1, 3, SIZE, SIZE)
    space = compressor.trace(net, x)
    units = find_units(net, x, space.cost.flops_terms)
    kinds = sorted((u.kind, u.cin, u.cout, u.groups) for u in units.values())
    assert kinds == [("conv", 3, 16, 1), ("conv", 16, 32, 1), ("groups", 16, 16, 16), ("linear", 32, 10, 1)]


@pytest.mark.parametrize("r_out,r_in", [(1.0, 1.0), (0.5, 0.25)])
def test_unit_graph_computes_the_layer_it_times(r_out, r_in):
    """The graph timed for a conv unit is that convolution (+ ReLU) at the kept widths."""
    from onnx import numpy_helper

    net = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1, dilation=1)).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    unit = next(iter(find_units(net, torch.randn(1, 8, SIZE, SIZE), compressor.trace(net, torch.randn(1, 8, SIZE, SIZE))
                                .cost.flops_terms).values()))
    model, shape = unit.graph(r_out, r_in, batch=2)
    weights = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer}
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = F.relu(F.conv2d(torch.from_numpy(x), weights["W"], weights["B"], stride=2, padding=1))
    assert shape == [2, round(8 * r_in), SIZE, SIZE] and got.shape[1] == round(16 * r_out)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


def test_table_is_cached_and_a_second_build_reuses_it(cache):
    net, x = TinyNet().eval(), torch.randn(1, 3, SIZE, SIZE)
    space = compressor.trace(net, x)
    first = attach_latency(space, net, x, Settings())
    assert first.table.measured == first.coverage.units > 0
    again = attach_latency(compressor.trace(net, x), net, x, Settings())
    assert again.table.measured == 0 and again.table.entries == first.table.entries
    assert attach_latency(compressor.trace(net, x), net, x, Settings(batch=2)).table.measured > 0  # batch is in the key
    assert LatencyTable.load(Settings()).extra["block"] == (first.block or 0)  # measured once, cached (0: none)


def test_a_cache_file_that_is_not_a_table_is_measured_afresh(cache):
    net, x = TinyNet().eval(), torch.randn(1, 3, SIZE, SIZE)
    path = LatencyTable(Settings()).path
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"key": Settings().key(), "units": {"x": "__import__('os')", "y": [[1.0, -2]]}}))
    cost = attach_latency(compressor.trace(net, x), net, x, Settings())
    assert cost.table.measured == cost.coverage.units
    path.write_text("not json {")
    assert LatencyTable.load(Settings()).entries == {}


def test_latency_cost_is_one_at_the_original_differentiable_and_monotone():
    net, x = TinyNet().eval(), torch.randn(1, 3, SIZE, SIZE)
    space = compressor.trace(net, x)
    attach_latency(space, net, x, Settings())
    n = space["channels"].size
    assert float(space.cost.fraction("latency")) == pytest.approx(1.0)
    v = torch.full((n,), 0.5, dtype=torch.double, requires_grad=True)
    half = space.cost.fraction("latency", {"channels": v})
    half.backward()
    assert 0 < float(half.detach()) < 1 and float(v.grad.sum()) > 0
    rng = np.random.default_rng(0)
    keep = rng.random(n) < 0.7
    less = keep & (rng.random(n) < 0.7)
    lat = lambda k: float(space.cost.fraction("latency", {"channels": torch.from_numpy(k.astype(float))}))  # noqa: E731
    assert lat(less) <= lat(keep) <= 1.0
    d = decide(space, {"channels": rng.random(n)}, 0.7, what="latency", round_to=1)
    assert d.cost(space, "latency") / space.cost.full("latency") <= 0.7


def test_recipe_and_cli_refuse_bad_latency_budgets(capsys):
    with pytest.raises(RecipeError, match=r"budget.latency: .*fraction in \(0, 1\), got 1.5"):
        load_recipe({"budget": {"latency": 1.5}})
    with pytest.raises(RecipeError, match="exactly one of budget.flops, budget.params and budget.latency"):
        load_recipe({"budget": {"latency": 0.5, "flops": 0.5}})
    assert load_recipe(None, {"budget.latency": 0.4, "budget.flops": None, "budget.batch": 8}).budget.what == "latency"
    assert main(["resnet18", "--budget-latency", "0", "--check"]) == 2
    assert "budget.latency" in capsys.readouterr().err
    assert main(["resnet18", "--method", "darts", "--set", "choices=[op,channels]", "--budget-latency", "0.5",
                 "--check"]) == 2
    assert "budget.latency: choices" in capsys.readouterr().err


def test_unreachable_latency_budget_says_the_smallest_figure():
    with pytest.raises(BudgetError, match=r"budget 0.010* of the latency cannot be met here: the smallest decision "
                                          r"measures [0-9.]+ .*ask for at least"):
        prepare(TinyNet(), {**TINY_RECIPE, "budget": {"latency": 0.01}})


def test_a_round_within_the_tolerance_is_accepted_on_the_median_of_three_measurements():
    """Round 0's first measurement lands on the target, its confirmations do not: the median misses,
    so a second round is decided; that one is confirmed and kept."""
    from compressor.decision import Decision
    from compressor.latency import meet_latency

    readings = iter([(1.0, 0.50), (1.0, 0.62), (1.0, 0.60),  # round 0: 0.50 once, median 0.60
                     (1.0, 0.70),  # round 1 misses: measured once
                     (1.0, 0.51), (1.0, 0.49), (1.0, 0.505)])  # round 2: median 0.505
    asked = []

    def redecide(target):
        asked.append(target)
        return Decision({"n": [len(asked)]})

    decision, rounds = meet_latency(Decision({"n": [0]}), 0.5, lambda d: next(readings), redecide, lambda d: 0.5,
                                    tolerance=0.03, rounds=5)
    assert [(r.measured, r.measurements) for r in rounds] == [(0.6, 3), (0.7, 1), (0.505, 3)]
    assert decision.to_dict() == {"n": [2]} and asked[0] == pytest.approx(0.5 * 0.5 / 0.6)


def test_corrections_bracket_the_target_with_the_smallest_decision():
    """A flat response (mobilenet_v2 at 32 px: 0.30 asked measured 0.368, then 0.244 measured
    0.364) sent the secant below what the table can decide; with the smallest decision measured
    (0.15 asked, 0.148 measured) the next budget interpolates between it and the round above."""
    from compressor.decision import Decision
    from compressor.latency import meet_latency

    readings = iter([(1.0, 0.368), (1.0, 0.364), (1.0, 0.25)] + [(1.0, 0.25)] * 2 + [(1.0, 0.364)] * 2)
    asked = []

    def redecide(target):
        asked.append(target)
        return Decision({"n": [len(asked)]})

    _, rounds = meet_latency(Decision(), 0.3, lambda d: next(readings), redecide, lambda d: 0.0, tolerance=0.03,
                             rounds=3, floor=(0.15, 0.148))
    ask = asked[0] + (0.3 - 0.364) * (0.3 - asked[0]) / (0.368 - 0.364)  # the secant, before: far below 0.15
    assert ask < 0.15 and [r.measured for r in rounds] == [0.368, 0.364, 0.25]
    assert asked[1] == pytest.approx(0.15 + (0.3 - 0.148) * (asked[0] - 0.15) / (0.364 - 0.148))


def test_when_no_round_meets_the_tolerance_the_nearest_two_are_measured_again_before_one_is_kept():
    """resnet50 at 0.3, batch 1: eight rounds missed, the kept one read 0.290 once and 0.324 on three
    measurements minutes later.  The nearest two single readings are confirmed; the median decides."""
    from compressor.decision import Decision
    from compressor.latency import meet_latency

    readings = iter([(1.0, 0.60), (1.0, 0.56), (1.0, 0.54),  # three rounds, none within 3% of 0.5
                     (2.0, 1.16), (1.0, 0.59),  # round 2 (0.54 read once) measured again: median 0.58
                     (1.0, 0.55), (1.0, 0.555)])  # round 1 (0.56): median 0.555
    asked = []

    def redecide(target):
        asked.append(target)
        return Decision({"n": [len(asked)]})

    decision, rounds = meet_latency(Decision({"n": [0]}), 0.5, lambda d: next(readings), redecide,
                                    lambda d: 0.5, tolerance=0.03, rounds=3)
    assert [(r.measured, r.measurements) for r in rounds] == [(0.6, 1), (0.555, 3), (0.58, 3)]
    assert rounds[2].original_ms == 2.0 and decision.to_dict() == {"n": [1]}
    assert next(readings, None) is None


def test_the_methods_own_round_is_no_bracket_end_once_rounds_are_redecided():
    """mobilenet_v2 at 0.5: the method's decision measured 0.68, the redecided rounds 0.38-0.46;
    with round 0 as the upper end the interpolation crept up from below and ran out of rounds."""
    from compressor.decision import Decision
    from compressor.latency import meet_latency

    readings = iter([(1.0, 0.68), (1.0, 0.38), (1.0, 0.50), (1.0, 0.50), (1.0, 0.50)])
    asked = []

    def redecide(target):
        asked.append(target)
        return Decision({"n": [len(asked)]})

    decision, rounds = meet_latency(Decision(), 0.5, lambda d: next(readings), redecide, lambda d: 0.0,
                                    tolerance=0.03, rounds=5, floor=(0.15, 0.146))
    assert asked[1] == pytest.approx(asked[0] * 0.5 / 0.38)  # scaled by its miss, not pulled towards 0.68
    assert decision.to_dict() == {"n": [2]} and rounds[-1].measurements == 3


def test_an_end_of_the_bracket_kept_for_rounds_counts_less():
    """mobilenet_v2 at 0.3, batch 1: rounds above the target at 0.40, 0.35, 0.35 while the far end
    (the smallest decision, 0.157) stayed: plain regula falsi crept down; Illinois halves the kept
    end's miss each time it is kept again."""
    from compressor.decision import Decision
    from compressor.latency import meet_latency

    readings = iter([(1.0, 0.41), (1.0, 0.397), (1.0, 0.345), (1.0, 0.347), (1.0, 0.30), (1.0, 0.3), (1.0, 0.3)])
    asked = []

    def redecide(target):
        asked.append(target)
        return Decision({"n": [len(asked)]})

    meet_latency(Decision(), 0.3, lambda d: next(readings), redecide, lambda d: 0.0, tolerance=0.03, rounds=5,
                 floor=(0.05, 0.157))
    falsi = lambda a1, m1, f0=0.157 - 0.3: 0.05 - f0 * (a1 - 0.05) / (m1 - 0.3 - f0)  # noqa: E731
    assert asked[0] == pytest.approx(falsi(0.3, 0.41)) and asked[1] == pytest.approx(falsi(asked[0], 0.397))
    assert asked[2] == pytest.approx(falsi(asked[1], 0.345, f0=(0.157 - 0.3) / 2))  # the floor kept twice
    assert asked[3] == pytest.approx(falsi(asked[2], 0.347, f0=(0.157 - 0.3) / 4))


def test_blocks_are_asked_for_only_after_every_width_at_its_least_measured_above_the_target():
    """resnet50 at 0.3, batch 1: a secant below the widths' floor removed blocks (top-1 86 -> 65%)
    though widths alone reach 0.3; the floor's budget is asked first, and lower only if it missed."""
    from compressor.decision import Decision
    from compressor.latency import meet_latency

    def run(at_step):  # what the widths' floor (0.2 asked) measures
        readings = iter([(1.0, 0.36), (1.0, 0.34), (1.0, at_step), (1.0, 0.30), (1.0, 0.30), (1.0, 0.30)])
        asked = []

        def redecide(target):
            asked.append(target)
            return Decision({"n": [len(asked)]})

        meet_latency(Decision(), 0.3, lambda d: next(readings), redecide, lambda d: 0.0, tolerance=0.03,
                     rounds=4, floor=(0.05, 0.15), step=0.2)
        return asked

    reachable, unreachable = run(0.25), run(0.33)
    assert reachable[1] == unreachable[1] == 0.2  # the secant went below: the floor of widths first
    assert reachable[2] > 0.2 and unreachable[2] < 0.2


def test_the_correction_removes_kept_blocks_only_where_widths_alone_cannot_reach():
    """mobilenet_v2 at 32 px and batch 1 measured 0.33-0.37 at every width: the correction may then
    skip the blocks the method kept, the least costly first, never before the widths are at their least."""
    from compressor.decision import Decision
    from compressor.latency import Redecider

    net, x = TinyNet().eval(), torch.randn(1, 3, SIZE, SIZE)
    space = compressor.trace(net, x)
    attach_latency(space, net, x, Settings(), calibrate_at=None)
    blocks = space["depth"].items()
    method = Decision({"depth": [blocks[2]]})  # the method removed the last block
    widths_only = Redecider(net, space, method, 1)
    scored = Redecider(net, space, method, 1, loss_scores={"depth": np.array([0.5, 0.1, 0.0])})
    with pytest.raises(BudgetError) as refused:
        widths_only(0.01)
    least = float(str(refused.value).split("keeps ")[1].split()[0])  # the widths-only smallest fraction
    assert widths_only.widths_floor is None and scored.widths_floor == pytest.approx(least, abs=1e-3)
    assert scored(least * 1.2)["depth"] == [blocks[2]]  # widths reach it: blocks as the method chose
    seen = []
    for target in np.linspace(least * 0.98, least * 0.3, 15):
        try:
            decision = scored(float(target))
        except BudgetError:
            break
        assert decision.cost(space, "latency") <= target * space.cost.full("latency")
        seen.append(sorted(set(decision["depth"]) - {blocks[2]}))
    assert seen[0] == [blocks[1]] and seen[-1] == sorted(blocks[:2])  # the lower-scored kept block goes first


def test_below_the_calibration_decision_the_prediction_runs_through_the_smallest_decision(monkeypatch):
    """mobilenet_v2 at 32 px: the calibration line, extended below its decision, predicted 0.02 of
    the latency for decisions that measured 0.33.  The smallest decision's measurement now anchors
    a second line: the prediction passes through both measured points and stays between them."""
    import compressor.latency as latency
    from compressor.budget import decide, smallest_decision

    readings = iter([(1.0, 0.6)] * 3 + [(1.0, 0.3)] * 3)  # the calibration decision, then the smallest
    monkeypatch.setattr(latency.Meter, "__call__", lambda self, model: next(readings))
    net, x = _wide_net().eval(), torch.randn(1, 3, 32, 32)
    space = compressor.trace(net, x)
    cost = attach_latency(space, net, x, Settings(), smallest_of=["channels"])
    assert cost.calibration["used"] and cost.calibration["below_used"]
    full = space.cost.full("latency")
    smallest = smallest_decision(space, ["channels"], round_to=cost.block)
    assert smallest.cost(space, "latency") / full == pytest.approx(0.3, abs=1e-6)
    knee = decide(space, latency.magnitude_scores(net, space), latency.CALIBRATE_AT, round_to=cost.block)
    assert knee.cost(space, "latency") / full == pytest.approx(0.6, abs=1e-6)
    scores = {"channels": np.random.default_rng(0).random(space["channels"].size)}
    for target in (0.35, 0.45, 0.55):
        between = decide(space, scores, target, what="latency", round_to=cost.block)
        assert 0.3 <= between.cost(space, "latency") / full <= target


def test_a_budget_below_the_measured_floor_is_refused_with_that_figure(monkeypatch):
    """The table may predict a floor this CPU does not reach: the smallest decision is timed, and a
    target it misses by more than the tolerance is refused before any training."""
    import compressor.latency as latency

    monkeypatch.setattr(latency.Meter, "__call__", lambda self, model: (1.0, 0.9))
    with pytest.raises(BudgetError, match=r"budget 0.500 of the latency cannot be met here: the smallest decision "
                                          r"measures 0.900 .*batch 1.* ask for at least 0.883"):
        prepare(TinyNet(), {**TINY_RECIPE, "budget": {"latency": 0.5}})


def test_the_smallest_decision_measures_well_under_the_original():
    net, x = _wide_net().eval(), torch.randn(1, 3, 32, 32)
    cost = attach_latency(compressor.trace(net, x), net, x, Settings(), smallest_of=["channels"])
    assert 0 < cost.floor < 0.8


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("latency_run")
    import os
    os.environ["COMPRESSOR_CACHE"] = str(out / "cache")
    try:
        recipe = {**TINY_RECIPE, "data": {**TINY_RECIPE["data"], "input_size": 32},
                  "budget": {"latency": 0.6, "tolerance": 0.1, "batch": 8}, "method": {"name": "prune"},
                  "export": {"round_to": 1, "latency_repeats": 20}}
        model = compressor.compress(_wide_net(), recipe, out=out / "run")
    finally:
        os.environ.pop("COMPRESSOR_CACHE")
    return model, json.loads((out / "run" / "report.json").read_text()), out / "run"


def test_latency_budget_run_meets_its_target_measured_again_by_the_report(run):
    """Loose: CI's cores are shared and the model runs in a millisecond.  The report's own
    side-by-side measurement, separate from the rounds, must land near the target."""
    _, report, out = run
    b = report["latency_budget"]
    assert b["rounds"] and b["rounds"][0]["asked"] == 0.6 and b["settings"]["batch"] == 8
    assert b["met"] == (abs(b["measured"] / 0.6 - 1) <= 0.1)
    assert b["met"] or len(b["rounds"]) == load_recipe(None).budget.rounds
    assert b["rounds"][-1]["measurements"] == (3 if b["met"] else 1) and 0 < b["smallest_measured"] < 0.6
    assert report["latency_ms"]["8"]["ratio"] == pytest.approx(0.6, abs=0.15)
    assert "## Latency budget" in (out / "report.md").read_text()
    assert json.loads((out / "checkpoints" / "latency.json").read_text())["decision"] == report["decision"]


def test_a_resumed_run_reuses_the_measured_decision(run, monkeypatch):
    """--resume after the rounds: the decision comes from checkpoints/latency.json, nothing is timed
    again (the fine-tune checkpoint was made for its shapes)."""
    import compressor.latency as latency
    from compressor.decision import Decision
    from compressor.methods import SearchResult
    from compressor.pipeline import Run

    _, report, out = run
    monkeypatch.setenv("COMPRESSOR_CACHE", str(out.parent / "cache"))
    recipe = {**TINY_RECIPE, "data": {**TINY_RECIPE["data"], "input_size": 32},
              "budget": {"latency": 0.6, "tolerance": 0.1, "batch": 8}, "method": {"name": "prune"}}
    resumed = Run(prepare(_wide_net(), recipe, out=out), resume=True)
    resumed.result = SearchResult(_wide_net(), Decision())

    def no_timing(*args, **kwargs):
        raise AssertionError("a resumed run measured again")

    monkeypatch.setattr(latency, "Meter", no_timing)
    assert resumed._meet_latency(_wide_net()).to_dict() == report["decision"]
    assert [r.measured for r in resumed.latency_rounds] == [r["measured"] for r in report["latency_budget"]["rounds"]]
