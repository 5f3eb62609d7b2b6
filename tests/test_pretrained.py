"""Pretrained originals through timm's and torchvision's own loaders, offline, from files written here."""
import json

import pytest
import timm
import torch
import torchvision

from compressor.cli import main
from compressor.pretrained import PretrainedError, load_pretrained, replace_head
from tests.images import write_image_folder

RUN = ["--method", "prune", "--quiet", "--set", "data.input_size=32", "--set", "data.batch_size=8",
       "--set", "search.epochs=1", "--set", "finetune.epochs=0", "--set", "export.latency_repeats=0",
       "--set", "export.round_to=1"]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No download can happen: empty caches under tmp_path and the offline switch on."""
    import huggingface_hub.constants as hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    hub = tmp_path / "torch-hub"
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))
    yield hub
    torch.hub.set_dir(old)


def test_torchvision_from_its_cache_with_a_new_head(offline):
    ref = torchvision.models.resnet18()
    (offline / "checkpoints").mkdir(parents=True)
    torch.save(ref.state_dict(), offline / "checkpoints" / "resnet18-f37072fd.pth")
    net, info = load_pretrained("resnet18", 5)
    assert info.head_replaced and info.pretrained_classes == 1000 and "resnet18-f37072fd.pth" in info.location
    assert net.fc.out_features == 5
    own = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(net.state_dict()[k], v) for k, v in own.items())


def test_timm_from_its_hugging_face_cache(offline, tmp_path):
    """The cache layout huggingface_hub reads offline: refs/main names a snapshot folder."""
    from safetensors.torch import save_file

    ref = timm.create_model("test_vit")
    repo = tmp_path / "hf" / "models--timm--test_vit.r160_in1k"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    save_file(ref.state_dict(), snapshot / "model.safetensors")
    net, info = load_pretrained("test_vit", 10)
    assert info.location == "hf-hub:timm/test_vit.r160_in1k" and info.head_replaced
    assert net.head.out_features == 10 and torch.equal(net.pos_embed, ref.pos_embed)


def test_timm_from_a_file_keeps_its_head_when_classes_match(offline, tmp_path):
    ref = timm.create_model("test_vit")
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    net, info = load_pretrained("test_vit", 1000, tmp_path / "w.pth")
    assert not info.head_replaced and info.weights == "test_vit.r160_in1k"
    assert all(torch.equal(net.state_dict()[k], v) for k, v in ref.state_dict().items())


def test_missing_weights_say_what_is_missing(offline, tmp_path):
    with pytest.raises(PretrainedError, match=r"not in the cache .*resnet18-f37072fd\.pth.*--pretrained FILE"):
        load_pretrained("resnet18", 10)
    with pytest.raises(PretrainedError, match="test_vit.r160_in1k are not in the cache"):
        load_pretrained("test_vit", 10)
    torch.save(timm.create_model("test_resnet").state_dict(), tmp_path / "other.pth")
    with pytest.raises(PretrainedError, match="could not be loaded into timm's test_vit"):
        load_pretrained("test_vit", 10, tmp_path / "other.pth")
    with pytest.raises(PretrainedError, match="cifar_resnet56 has no pretrained weights"):
        load_pretrained("cifar_resnet56", 10)


def test_replace_head_handles_a_conv_classifier():
    net = torchvision.models.squeezenet1_1()
    assert replace_head(net, 1000, 7) == "classifier.1"
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 7)


@pytest.mark.parametrize("model", ["resnet18", "test_vit"])
def test_compress_pretrained_on_an_image_folder(model, offline, tmp_path, capsys):
    """The acceptance run: `compress MODEL --pretrained [FILE] --data folder`, offline."""
    data = write_image_folder(tmp_path / "images", classes=3)
    if model == "resnet18":  # through torchvision's cache
        (offline / "checkpoints").mkdir(parents=True)
        torch.save(torchvision.models.resnet18().state_dict(), offline / "checkpoints" / "resnet18-f37072fd.pth")
        args = ["--pretrained", "--recipe", "imagenet-finetune"]  # + prune, KD from the original, bf16
    else:  # a local file through timm's pretrained_cfg_overlay
        torch.save(timm.create_model(model).state_dict(), tmp_path / "w.pth")
        args = ["--pretrained", str(tmp_path / "w.pth")]
    out = tmp_path / "run"
    assert main([model, *args, "--data", str(data), "--out", str(out), *RUN]) == 0
    captured = capsys.readouterr()
    assert "1000-class head is replaced by a new 3-class one" in captured.out
    assert "Warning" not in captured.err  # dependencies' deprecations go to the log file
    report = json.loads((out / "report.json").read_text())
    assert "base" not in report["history"]  # pretrained: no base training
    if model == "resnet18":
        assert report["method_summary"]["distillation"]["teacher"] == "original"
        assert report["recipe"]["run"]["amp"] == "bf16"
    d = report["data"]
    assert d["classes"] == 3 and d["original_weights"].startswith("pretrained: ")
    assert "CenterCrop(size=(32, 32))" in d["transforms"]["test"] and "Normalize" in d["transforms"]["test"]
    interp = "bilinear" if model == "resnet18" else "bicubic"  # torchvision's weights vs timm's config
    assert interp in d["transforms"]["test"] and "RandomResizedCrop" in d["transforms"]["train"]
    for key in ("original", "compressed"):
        assert 0 <= report[key]["test_accuracy"] <= report[key]["test_top5"] == 1.0  # 3 classes: top-5 is all
    md = (out / "report.md").read_text()
    assert "test top-5 accuracy" in md and "training transform" in md


class _RunsCode:
    """Pickles into a call of ``os.system``: what a hostile weights file does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["file", "cache"])
def test_torchvision_weights_that_run_code_are_refused_unread(where, offline, tmp_path, capsys):
    """torchvision unpickles its weights files fully (weights_only=False): a file that names code
    is refused by the safe unpickler first, given as a file or found in the cache."""
    marker = tmp_path / "marker"
    state = torchvision.models.resnet18().state_dict()
    state["evil"] = _RunsCode(marker)
    path = tmp_path / "evil.pth"
    if where == "cache":
        (offline / "checkpoints").mkdir(parents=True)
        path = offline / "checkpoints" / "resnet18-f37072fd.pth"
    torch.save(state, path)
    args = ["resnet18", "--pretrained", *([str(path)] if where == "file" else []), "--check"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a plain state_dict of tensors" in err, err
    assert not marker.exists()
