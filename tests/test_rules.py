"""Recipe rules by glob: null leaves a module untouched, a mapping constrains each kind; a pattern
that matches nothing is one line and exit 2."""
import json

import pytest
import torch

from compressor.cli import main
from compressor.export import load_compressed
from compressor.frontend import trace
from compressor.recipe import RecipeError
from compressor.rules import apply_rules
from compressor.zoo import create_model

RULES = 'rules={"fc": null, "layer1.*": {min_keep: 0.75}}'
SMALL = ["--set", "data.input_size=32", "--set", "data.limit_train=64", "--set", "base.epochs=0",
         "--set", "search.epochs=1", "--set", "finetune.epochs=0", "--set", "export.latency_repeats=0",
         "--set", "export.round_to=1", "--quiet"]


def test_rules_leave_fc_whole_and_three_quarters_of_layer1(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["resnet18", "--method", "prune", "--budget-flops", "0.3", "--set", RULES, "--out", str(out),
                 *SMALL]) == 0, capsys.readouterr().err
    model = load_compressed(out)
    assert model.fc.in_features == 512 and model.fc.out_features == 10  # untouched, inputs included
    layer1 = [m for name, m in model.named_modules() if name.startswith("layer1") and isinstance(m, torch.nn.Conv2d)]
    assert layer1 and all(m.out_channels >= 48 and m.in_channels >= 48 for m in layer1)  # 75% of 64
    assert model.conv1.out_channels >= 48  # the stem writes layer1's residual stream
    assert model.layer2[0].conv1.out_channels < 128  # elsewhere the budget still cuts
    report = json.loads((out / "report.json").read_text())
    assert report["compressed"]["flops_fraction_fvcore"] <= 0.3
    assert any("frozen" in line for line in report["rules"]["fc"])
    assert any("min_keep 0.75" in line for line in report["rules"]["layer1.*"])


def test_a_later_mapping_wins_and_null_is_final():
    model = create_model("resnet18").eval()
    space = trace(model, torch.randn(1, 3, 32, 32))
    ruled, report = apply_rules(space, {"layer1.*": {"min_keep": 0.9}, "layer1.0.*": {"min_keep": 0.25}})
    ch = ruled["channels"]
    assert ch.group("layer1.0.conv1").min_keep == 16 and ch.group("layer1.1.conv1").min_keep == 58
    ruled, _ = apply_rules(space, {"layer2.*": None, "layer2.0.conv1": {"min_keep": 0.5}})
    assert ruled["channels"].group("layer2.0.conv1").frozen == "rule 'layer2.*': left untouched"
    assert not {"layer2.0#0", "layer2.1#0"} & set(ruled["depth"].items())  # its blocks are frozen too


@pytest.mark.parametrize("rule, message", [
    ('rules={"head*": null}', "rules: pattern 'head*' matches no module"),
    ('rules={"fc": {min_keep: 2}}', "min_keep must be a fraction in (0, 1], got 2"),
    ('rules={"fc": {colour: red}}', "rules['fc']: no kind of choice in this space takes colour"),
])
def test_a_bad_rule_is_one_line_and_exit_2(rule, message, tmp_path, capsys):
    assert main(["resnet18", "--method", "prune", "--set", rule, "--check", "--out", str(tmp_path / "x"),
                 *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_inspect_shows_what_each_rule_did(capsys):
    assert main(["inspect", "resnet18", "--size", "32", "--set", RULES]) == 0
    printed = capsys.readouterr().out
    assert "rules:" in printed and "'fc': channels" in printed and "min_keep 0.75" in printed
    with pytest.raises(RecipeError, match="matches no module"):
        apply_rules(trace(create_model("resnet18").eval(), torch.randn(1, 3, 32, 32)), {"nothing*": None})
