"""Bad input: one line on stderr, exit 2, and nothing already on disk is touched."""
import errno
import hashlib

import pytest
import torch

from compressor.cli import main
from tests.images import write_image_folder


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


def _empty_class(tmp):
    root = write_image_folder(tmp / "images", classes=2, per_class=2, size=8)
    (root / "train" / "class_9").mkdir()
    return ["resnet18", "--data", str(root)]


def _unreadable_image(tmp):
    root = write_image_folder(tmp / "images", classes=2, per_class=2, size=8)
    for f in (root / "train" / "class_1").iterdir():
        f.write_bytes(b"this is not a png")
    return ["resnet18", "--data", str(root)]


def _head_mismatch(tmp):
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp / "imagenet.pth")
    return ["resnet18", "--weights", str(tmp / "imagenet.pth")]


def _one_class(tmp):
    return ["resnet18", "--data", str(write_image_folder(tmp / "images", classes=1, per_class=2, size=8))]


def _nan_weights(tmp):
    import torchvision

    state = torchvision.models.resnet18(num_classes=10).state_dict()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp / "nan.pth")
    return ["resnet18", "--weights", str(tmp / "nan.pth")]


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
    "opset-too-new": (lambda tmp: ["resnet18", "--set", "export.opset=23"],
                      "export.opset: Input should be less than or equal to 20"),
    "int8-without-onnx": (lambda tmp: ["resnet18", "--quantize", "int8", "--set", "export.onnx=false"],
                          "quantize=int8 quantizes model.onnx: it needs onnx=true"),
    "calibration-unknown": (lambda tmp: ["resnet18", "--quantize", "int8", "--set", "export.calibration=kl"],
                            "export.calibration: Input should be 'minmax', 'entropy' or 'percentile'"),
    "empty-class-folder": (_empty_class, "Found no valid file for the classes class_9"),
    "unreadable-image": (_unreadable_image, "cannot read image"),
    "weights-head-mismatch": (_head_mismatch, "has a 1000-class head (fc.weight) but the data has 10 classes"),
    "device-name": (lambda tmp: ["resnet18", "--device", "gpu"], "device 'gpu' is not a device name"),
    "scs-without-search": (lambda tmp: ["resnet18", "--set", "search.epochs=0"],
                           "search.epochs: scs trains in the search stage and needs at least 1"),
    "tas-without-search": (lambda tmp: ["resnet18", "--method", "tas", "--epochs", "0"],
                           "search.epochs: tas trains in the search stage and needs at least 1"),
    "pretrained-and-weights": (lambda tmp: ["resnet18", "--pretrained", "--weights", "w.pt"],
                               "weights and pretrained both say where"),
    "pretrained-missing-file": (lambda tmp: ["resnet18", "--pretrained", str(tmp / "none.pth")],
                                "pretrained weights file"),
    "pretrained-none-exist": (lambda tmp: ["cifar_resnet56", "--pretrained"], "has no pretrained weights"),
    "one-class-folder": (_one_class, "has images of 1 class(es): a classifier needs at least 2"),
    "nan-weights": (_nan_weights, "layer2.0.conv1.weight holds 1 non-finite value(s)"),
    "budget-below-reach": (lambda tmp: ["resnet18", "--method", "prune", "--budget-flops", "0.001"],
                           "budget 0.001 of the flops cannot be met: the smallest decision keeps 0.038"),
}


def _no_cuda(tmp, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return ["resnet18", "--device", "cuda"]


def _full_disk(tmp, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))
    return ["resnet18", "--set", "data.limit_train=64", "--resume"]


def _offline_no_cache(tmp, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp / "empty-hub"))
    return ["resnet18", "--pretrained"]


ENV_CASES = {  # bad input that needs the machine changed: no CUDA, a full disk, no network or cache
    "no-cuda": (_no_cuda, "CUDA is not available on this machine"),
    "full-disk": (_full_disk, "MiB free, and this run needs about"),
    "pretrained-offline": (_offline_no_cache, "are not in the cache"),
}


def _assert_refused(args, message, previous_run, capsys):
    before = _snapshot(previous_run)
    code = main([*args, "--out", str(previous_run), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("compress: error:"), err
    assert message in err
    assert _snapshot(previous_run) == before


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_exits_2_without_writing(case, tmp_path, previous_run, capsys):
    make_args, message = CASES[case]
    _assert_refused(make_args(tmp_path), message, previous_run, capsys)


@pytest.mark.parametrize("case", list(ENV_CASES), ids=list(ENV_CASES))
def test_bad_environment_exits_2_without_writing(case, tmp_path, previous_run, capsys, monkeypatch):
    make_args, message = ENV_CASES[case]
    _assert_refused(make_args(tmp_path, monkeypatch), message, previous_run, capsys)


def test_disk_full_while_writing_is_one_line(tmp_path, capsys, monkeypatch):
    """ENOSPC in the middle of a run: one line, exit 2, and the checkpoints stay for --resume."""
    import compressor.pipeline

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "model.safetensors"))

    monkeypatch.setattr(compressor.pipeline, "save_compressed", full)
    code = main(["tests.tiny:TinyNet", "--out", str(tmp_path / "run"), "--quiet", "--method", "prune", "--budget-flops", "0.8",
                 "--set", "data.input_size=16", "--set", "data.limit_train=64", "--set", "base.epochs=0",
                 "--set", "search.epochs=1", "--set", "finetune.epochs=0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "No space left on device writing" in err and "--resume" in err
    assert (tmp_path / "run" / "checkpoints" / "finetune.pt").exists()


def test_corrupt_checkpoint_on_resume(tmp_path, previous_run, capsys):
    before = _snapshot(previous_run)
    code = main(["tests.tiny:TinyNet", "--out", str(previous_run), "--resume", "--quiet", "--set", "data.input_size=16",
                 "--set", "data.limit_train=64", "--set", "base.epochs=0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "is corrupt or not a compressor checkpoint" in err and len(err.splitlines()) == 1, err
    assert _snapshot(previous_run) == before


def test_unreachable_budget_figures_differ_and_the_suggestion_is_reachable(tmp_path, capsys):
    """The two figures of the message differ as printed, and the budget it suggests is met."""
    import re

    assert main(["resnet18", "--method", "prune", "--budget-flops", "0.001", "--check"]) == 2
    err = capsys.readouterr().err
    want, floor, suggested = re.search(r"budget (\S+) of .* keeps (\S+) .* at least (\S+)$", err.strip()).groups()
    assert want != floor and float(suggested) >= float(floor)
    assert main(["resnet18", "--method", "prune", "--budget-flops", suggested, "--check",
                 "--out", str(tmp_path / "never")]) == 0
    assert "check out" in capsys.readouterr().out and not (tmp_path / "never").exists()


TINY_RUN = ["tests.tiny:TinyNet", "--quiet", "--method", "prune", "--budget-flops", "0.8", "--set", "data.input_size=16",
            "--set", "data.limit_train=128", "--set", "base.epochs=2", "--set", "search.epochs=1",
            "--set", "finetune.epochs=0", "--set", "export.latency_repeats=0"]


def test_a_loss_that_becomes_nan_stops_with_stage_epoch_and_step(tmp_path, capsys):
    out = tmp_path / "run"
    code = main([*TINY_RUN, "--out", str(out), "--set", "finetune.lr=1e30", "--set", "finetune.epochs=2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "finetune: the loss is nan at epoch 1, step" in err or "finetune: the loss is inf at epoch 1, step" in err
    assert f"finished epochs stay checkpointed in {out / 'checkpoints'}" in err
    assert (out / "checkpoints" / "base.pt").exists() and not (out / "report.json").exists()


def test_sigterm_checkpoints_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    """SIGTERM mid-epoch (as a scheduler sends it): the resume line, exit 143, the last finished
    epoch checkpointed; --resume then finishes the run from there."""
    import os
    import signal

    import compressor.api

    real = compressor.api.compress

    def terminated_in_base_epoch_2(*args, **kwargs):
        def term(stage, epoch, step):
            if (stage, epoch, step) == ("base", 1, 1):
                os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, callbacks=(term,), **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(compressor.api, "compress", terminated_in_base_epoch_2)
    assert main([*TINY_RUN, "--out", str(out)]) == 143
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == ["compress: terminated (SIGTERM); the last finished epoch is checkpointed: "
                                "rerun with --resume"]
    from compressor.train import load_checkpoint

    assert load_checkpoint(out / "checkpoints" / "base.pt")["epoch"] == 1
    assert signal.getsignal(signal.SIGTERM) is not compressor.cli._raise_terminated  # handler restored
    monkeypatch.setattr(compressor.api, "compress", real)
    assert main([*TINY_RUN, "--out", str(out), "--resume"]) == 0
    assert (out / "report.json").exists()
