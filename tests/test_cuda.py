"""Every method end to end on CUDA under autocast and channels_last, and `compress eval` there.
CI has no GPU: these run on a GPU machine (docs/gpu.md); the same paths on CPU are in
test_api.py, test_ddp_run.py and tests/train/."""
import pytest
import torch

from compressor.cli import main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TINY = ["--set", "data.input_size=16", "--set", "data.limit_train=256", "--set", "base.epochs=1",
        "--set", "search.epochs=2", "--set", "finetune.epochs=1", "--set", "export.latency_repeats=0"]


@pytest.mark.parametrize("method,amp", [("scs", "bf16"), ("prune", "fp16"), ("tas", "bf16"), ("grow", "bf16"),
                                        ("grow", "fp16")])
def test_method_runs_on_cuda(method, amp, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["resnet18", "--method", method, "--device", "cuda", "--out", str(out), "--quiet",
                 "--set", f"run.amp={amp}", "--set", "run.channels_last=true", *TINY]) == 0
    assert (out / "model.onnx").exists() and (out / "report.json").exists()
    capsys.readouterr()
    assert main(["eval", str(out), "--device", "cuda"]) == 0
    assert "test accuracy top-1" in capsys.readouterr().out
