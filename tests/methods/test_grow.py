"""``grow`` end to end on a small user model: seeds, growth, fine-tune, export."""
import copy

import pytest
import torch

import compressor
from compressor.methods.grow import GrowMethod, uniform_decision
from compressor.methods import GrowConfig
from compressor.recipe import RecipeError, TrainConfig
from compressor.frontend import trace
from tests.tiny import TINY_RECIPE, TinyNet


def _recipe(**method):
    r = copy.deepcopy(TINY_RECIPE)
    r["method"] = {"name": "grow", **method}
    r["search"]["epochs"] = 2
    return r


def test_grow_meets_the_budget_and_the_grown_model_starts_as_the_sum_of_its_seeds(tmp_path):
    torch.manual_seed(0)
    result = compressor.compress(TinyNet(), _recipe(), out=tmp_path, overrides={"budget.flops": 0.5})
    report = result.report
    s = report["method_summary"]
    assert report["compressed"]["flops_fraction_fvcore"] <= 0.5
    assert report["onnx"]["max_rel_diff"] < 1e-4
    assert s["seed_epochs"] == [1, 1] and s["growth_gap"] < 1e-5 and not s["shared_groups"]
    assert set(s["val_top1"]) == {"seed_a", "seed_b", "grown"}
    assert s["coefficients"] == 2 * s["mixture_weights"]   # a few numbers per layer
    # each seed has half the units of every group of the target, and the target is uniform
    for name, n in s["seed_units"].items():
        assert 2 * n == s["target_units"][name]
    assert "base" not in report["seconds"] and "search" in report["seconds"]   # no original is trained
    assert "never trained" in report["data"]["original_weights"]


def test_grow_into_the_model_itself_without_fusion_beside_the_target_from_scratch(tmp_path):
    torch.manual_seed(0)
    recipe = _recipe(target="model", fusion=False, new_coefficients="copy", scratch_baseline=True,
                     equal_time_baselines=True)
    result = compressor.compress(TinyNet(), recipe, out=tmp_path)
    s = result.report["method_summary"]
    assert result.report["compressed"]["flops_fraction_fvcore"] == pytest.approx(1.0)
    assert s["seed_epochs"] == [2] and "growth_gap" not in s
    base = s["baseline"]
    assert base["epochs"] == 3 and 0 <= base["test_top1"] <= 1 and base["seconds"] > 0   # 2 seed + 1 fine-tune
    # counted: 2 epochs of a seed (its FLOPs share of the target) + 1 epoch of the target, over 3 epochs
    assert base["training_flops_ratio"] == pytest.approx((2 * base["seed_flops_share"] + 1) / 3, abs=1e-3)
    assert 0.2 < base["seed_flops_share"] < 0.3   # half the width: about a quarter of the MACs
    assert (tmp_path / "checkpoints" / "scratch.pt").exists()
    # at the grow path's wall-clock: the target for the epochs its measured epoch time fits, and the seed alone
    eq = base["equal_wall_clock"]
    target_epoch = base["seconds"] / base["epochs"]
    assert abs(eq["target from scratch"]["epochs"] - max(1, round(base["method_seconds"] / target_epoch))) <= 1
    for run in eq.values():
        assert run["epochs"] >= 1 and run["seconds"] > 0 and 0 <= run["test_top1"] <= 1


def test_equal_time_baselines_need_the_scratch_baseline(tmp_path):
    with pytest.raises(RecipeError, match="equal_time_baselines needs scratch_baseline"):
        compressor.compress(TinyNet(), _recipe(equal_time_baselines=True, scratch_baseline=False), out=tmp_path)


@pytest.mark.parametrize("grown_lr, expected", [("search", 0.05), ("finetune", 0.01)])
def test_the_grown_model_trains_at_the_chosen_stage_learning_rate(grown_lr, expected):
    space = trace(TinyNet().eval(), torch.randn(1, 3, 16, 16))
    method = GrowMethod(GrowConfig(grown_lr=grown_lr), space)
    finetune = method.finetune_config(TrainConfig(epochs=3, lr=0.01, warmup_epochs=1), TrainConfig(epochs=6, lr=0.05))
    assert finetune.lr == expected and finetune.epochs == 3 and finetune.warmup_epochs == 1  # only the rate moves


def test_fusion_needs_an_epoch_per_seed(tmp_path):
    recipe = _recipe()
    recipe["search"]["epochs"] = 1
    with pytest.raises(RecipeError, match="at least 2"):
        compressor.compress(TinyNet(), recipe, out=tmp_path)


def test_uniform_target_keeps_the_same_share_of_every_group():
    space = trace(TinyNet().eval(), torch.randn(1, 3, 16, 16))
    d = uniform_decision(space, 0.3)
    assert d.flops(space) / float(space.cost.flops()) <= 0.3
    shares = {round(len(k) / space["channels"].group(n).size, 1) for n, k in d["channels"].items()}
    assert len(shares) == 1 and all(len(k) % 2 == 0 for k in d["channels"].values())


def test_seeds_train_under_bf16_autocast_and_channels_last(tmp_path):
    # template mixtures stack conv weights into 5-d tensors, which Module.to(channels_last) refuses
    torch.manual_seed(0)
    recipe = _recipe()
    recipe["run"] = {**recipe["run"], "amp": "bf16", "channels_last": True}
    result = compressor.compress(TinyNet(), recipe, out=tmp_path)
    assert result.report["method_summary"]["growth_gap"] < 1e-5
    assert result.report["onnx"]["max_rel_diff"] < 1e-4
