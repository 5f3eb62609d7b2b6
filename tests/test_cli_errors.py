"""Bad input: one line on stderr, exit 2, and nothing already on disk is touched."""
import hashlib

import pytest
import torch

from compressor.cli import main


def _snapshot(d):
    return {p.relative_to(d): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def previous_run(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "report.json").write_text('{"previous": true}')
    (out / "checkpoints" / "search.pt").write_bytes(b"not a checkpoint at all")
    return out


def _bad_yaml(tmp):
    p = tmp / "bad.yaml"
    p.write_text("budget: {flops: 0.5\n")
    return ["resnet18", "--recipe", str(p)]


def _unknown_key(tmp):
    p = tmp / "typo.yaml"
    p.write_text("search: {epoch: 3}\n")
    return ["resnet18", "--recipe", str(p)]


def _corrupt_weights(tmp):
    p = tmp / "w.pt"
    p.write_bytes(b"\x80\x02garbage")
    return ["resnet18", "--weights", str(p)]


CASES = {
    "malformed-yaml": (_bad_yaml, "not valid YAML at line 2"),
    "unknown-key": (_unknown_key, "search.epoch: unknown key"),
    "budget-zero": (lambda tmp: ["resnet18", "--budget-flops", "0"], "budget.flops: must be a fraction in (0, 1)"),
    "budget-one": (lambda tmp: ["resnet18", "--budget-params", "1"], "budget.params: must be a fraction in (0, 1)"),
    "missing-data": (lambda tmp: ["resnet18", "--data", str(tmp / "nowhere")], "does not exist"),
    "unknown-model": (lambda tmp: ["resnet51"], "unknown model 'resnet51'; did you mean resnet51q, resnet50"),
    "corrupt-weights": (_corrupt_weights, "is corrupt or not a state_dict"),
    "existing-output": (lambda tmp: ["resnet18"], "already holds a run"),
    "too-many-blocks": (lambda tmp: ["resnet18", "--method", "prune", "--set", "method.blocks=9"],
                        "method.blocks: 9 blocks to remove, but the model has only 5"),
    "tas-ratio": (lambda tmp: ["resnet18", "--method", "tas", "--set", "method.ratios=[0.5,1.2]"],
                  "method.ratios: candidate ratios must be in (0, 1], got [1.2]"),
    "voting-k": (lambda tmp: ["resnet18", "--method", "tas", "--set", "method.self_distill.k=0"],
                 "method.self_distill.k: Input should be greater than or equal to 1"),
    "kd-alpha": (lambda tmp: ["resnet18", "--set", "distill.alpha=1.5"],
                 "distill.alpha: Input should be less than or equal to 1"),
    "teacher-unknown": (lambda tmp: ["resnet18", "--set", "distill.teacher=resnet51", "--set",
                                     "distill.teacher_weights=w.pt"], "unknown model 'resnet51'"),
    "teacher-untrained": (lambda tmp: ["resnet18", "--set", "distill.teacher=resnet34"],
                          "distill.teacher: 'resnet34' needs distill.teacher_weights"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_exits_2_without_writing(case, tmp_path, previous_run, capsys):
    make_args, message = CASES[case]
    before = _snapshot(previous_run)
    code = main([*make_args(tmp_path), "--out", str(previous_run), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("compress: error:"), err
    assert message in err
    assert _snapshot(previous_run) == before


def test_corrupt_checkpoint_on_resume(tmp_path, previous_run, capsys):
    before = _snapshot(previous_run)
    code = main(["tests.tiny:TinyNet", "--out", str(previous_run), "--resume", "--quiet", "--set", "data.input_size=16",
                 "--set", "data.limit_train=64", "--set", "base.epochs=0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "is corrupt or not a compressor checkpoint" in err and len(err.splitlines()) == 1, err
    assert _snapshot(previous_run) == before
