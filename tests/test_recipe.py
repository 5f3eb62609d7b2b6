import pytest

from compressor.methods import PruneConfig, ScsConfig, TasConfig
from compressor.recipe import Recipe, RecipeError, builtin_recipes, load_recipe


def test_defaults_and_builtins():
    r = load_recipe()
    assert isinstance(r, Recipe) and r.budget.what == "flops" and r.budget.target == 0.5
    assert isinstance(r.method, ScsConfig) and r.method.lambda1 == 1.0  # channels + layers
    assert {"default", "scs-resnet56-cifar10", "scs-resnet50-imagenet"} <= set(builtin_recipes())
    cifar = load_recipe("scs-resnet56-cifar10")
    assert cifar.method.lambda1 == 0.5 and cifar.search.epochs == 160 and cifar.search.schedule == "step"


@pytest.mark.parametrize("name", ["tas-resnet56-cifar10", "tas-resnet50-imagenet"])
def test_tas_builtins_carry_the_paper_constants(name):
    r = load_recipe(name)
    assert isinstance(r.method, TasConfig)
    m = r.method
    assert (m.candidates, m.tau_max, m.tau_min, m.cost_weight, m.tolerance) == (2, 5.0, 0.1, 2.0, 0.05)
    assert (m.arch_lr, m.arch_betas, m.arch_weight_decay, m.split) == (1e-3, (0.5, 0.999), 1e-3, 0.5)
    assert m.ratios == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0] and m.final_init == "scratch"
    assert r.distill.teacher == "original" and r.distill.temperature == 4.0
    assert r.distill.alpha == (0.9 if "cifar" in name else 0.5)


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
    ({"method": {"name": "magic"}}, "method: unknown method 'magic'; expected one of scs, prune, tas, grow"),
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


def test_grow_builtin_carries_the_paper_schedule():
    r = load_recipe("grow-wrn28-cifar100")
    assert r.model == "cifar_wrn28_10" and r.method.name == "grow" and r.method.target == "model"
    assert r.search.epochs == 400 and r.method.second_seed == 0.5 and r.finetune.epochs == 40   # 200 + 200 + 40
    assert r.method.new_coefficients == "orthogonal" and r.finetune.lr == 1e-4


def test_load_recipe_leaves_the_callers_dicts_alone():
    # tools build many recipes from one dict of common overrides; a dotted key used to write into it
    common = {"method": {"name": "grow"}}
    load_recipe("default", {**common, "method.fusion": False})
    assert common == {"method": {"name": "grow"}}
    assert load_recipe("default", common).method.fusion is True


def test_darts_family_recipes_extend_the_darts_ones_with_their_papers_constants():
    base, pc = load_recipe("darts-cifar10"), load_recipe("pc-darts-cifar10")
    assert (pc.method.partial_channels, pc.method.edge_normalization, pc.method.warmup) == (4, True, 0.3)
    assert (pc.data.batch_size, pc.search.lr, pc.method.arch_lr) == (256, 0.1, 6e-4)
    assert (pc.search.epochs, pc.search.weight_decay, pc.method.split, pc.method.candidates) == \
        (base.search.epochs, base.search.weight_decay, base.method.split, base.method.candidates)
    assert pc.data.augment and pc.model_args == base.model_args  # mappings merge key by key
    cpu = load_recipe("darts-cifar10-cpu")
    p, sd = load_recipe("p-darts-cifar10-cpu"), load_recipe("sd-darts-cifar10-cpu")
    assert (p.method.stages, p.method.stage_layers, p.method.skip_cap) == ([5, 3], [3, 4], 2)
    assert p.method.skip_dropout == [0.0, 0.4, 0.7]
    full_p, full_sd = load_recipe("p-darts-cifar10"), load_recipe("sd-darts-cifar10")
    assert (full_p.model_args, full_p.method.stage_layers, full_p.search.epochs) == ({"layers": 17}, [5, 11], 75)
    assert full_sd.method.self_distill.enabled and full_sd.search == base.search
    assert sd.method.self_distill.enabled and not cpu.method.self_distill.enabled
    assert p.model_dump(exclude={"method"}) == sd.model_dump(exclude={"method"}) == cpu.model_dump(exclude={"method"})


def test_a_recipe_file_extends_another_by_relative_path_and_cycles_are_refused(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text("extends: default\nbudget: {flops: 0.3}\nsearch: {epochs: 7, lr: 0.2}\n")
    (tmp_path / "sub" / "child.yaml").write_text("extends: ../base.yaml\nsearch: {epochs: 2}\n")
    r = load_recipe(tmp_path / "sub" / "child.yaml")
    assert (r.budget.target, r.search.epochs, r.search.lr) == (0.3, 2, 0.2)
    assert r.finetune == load_recipe("default").finetune
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(RecipeError, match=r"extends .*a.yaml, which extends it back"):
        load_recipe(tmp_path / "a.yaml")
    (tmp_path / "odd.yaml").write_text("extends: [default]\n")
    with pytest.raises(RecipeError, match=r"odd.yaml: extends must name a recipe, got \['default'\]"):
        load_recipe(tmp_path / "odd.yaml")
