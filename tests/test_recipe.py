import pytest

from compressor.recipe import PruneConfig, Recipe, RecipeError, ScsConfig, builtin_recipes, load_recipe


def test_defaults_and_builtins():
    r = load_recipe()
    assert isinstance(r, Recipe) and r.budget.what == "flops" and r.budget.target == 0.5
    assert isinstance(r.method, ScsConfig) and r.method.lambda1 == 1.0  # channels + layers
    assert {"default", "scs-resnet56-cifar10", "scs-resnet50-imagenet"} <= set(builtin_recipes())
    cifar = load_recipe("scs-resnet56-cifar10")
    assert cifar.method.lambda1 == 0.5 and cifar.search.epochs == 160 and cifar.search.schedule == "step"


def test_round_trip_and_overrides(tmp_path):
    r = load_recipe({"method": {"name": "prune", "importance": "taylor"}}, {"budget": {"params": 0.3}})
    assert isinstance(r.method, PruneConfig) and r.budget.what == "params"
    path = tmp_path / "r.yaml"
    path.write_text(r.to_yaml())
    assert load_recipe(path) == r
    assert load_recipe(str(path), {"search.epochs": 9}).search.epochs == 9


@pytest.mark.parametrize("data, message", [
    ({"budget": {"flops": 0}}, "budget.flops: must be a fraction in (0, 1), got 0"),
    ({"budget": {"flops": 1.0}}, "budget.flops: must be a fraction in (0, 1)"),
    ({"budget": {"flops": 0.5, "params": 0.5}}, "set exactly one"),
    ({"search": {"epochz": 3}}, "search.epochz: unknown key"),
    ({"method": {"name": "scs", "lamda1_base": 1}}, "method.lamda1_base: unknown key"),
    ({"method": {"name": "magic"}}, "method: unknown method; expected one of scs, prune"),
    ({"data": {"batch_size": "big"}}, "data.batch_size: Input should be a valid integer"),
    ({"version": 2}, "version: this compressor reads recipe version 1"),
], ids=["zero", "one", "both", "unknown-key", "unknown-method-key", "unknown-method", "type", "version"])
def test_errors_name_the_key(data, message):
    with pytest.raises(RecipeError) as exc:
        load_recipe(data)
    assert message in str(exc.value)


def test_yaml_and_name_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("budget: {flops: 0.5\nmethod: scs\n")
    with pytest.raises(RecipeError, match="not valid YAML at line"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(RecipeError, match="unknown recipe 'nosuch'.*default"):
        load_recipe("nosuch")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(RecipeError, match="must be a mapping"):
        load_recipe(listy)
