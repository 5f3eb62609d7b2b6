import subprocess
import sys
from pathlib import Path

import pytest

from compressor.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_inspect_prints_groups_blocks_and_totals(capsys):
    assert main(["inspect", "resnet18", "--size", "64", "--all"]) == 0
    out = capsys.readouterr().out
    assert "channel groups: 13 (12 prunable, 1 frozen)" in out
    assert "layer1.0#0" in out and "fc: reaches the model output" in out
    assert "FLOPs" in out and "params" in out


def test_unknown_model_suggests_and_exits_2(capsys):
    assert main(["inspect", "resnt18"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnt18'" in err and "resnet18" in err


@pytest.mark.slow
def test_coverage_tool_on_a_representative_slice(tmp_path):
    """CI's slice of tools/coverage.py: a CNN with blocks, a depthwise net, a timm transformer, and a
    detection model, refused by name."""
    md = tmp_path / "cov.md"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "coverage.py"), "--models",
                           "resnet18,mnasnet0_5,deit_tiny_patch16_224,ssdlite320_mobilenet_v3_large", "--size", "64", "--no-yardstick",
                           "--md", str(md), "--timeout", "600"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("model=")]
    assert len(lines) == 4
    assert all("status=pass" in line and "trace_mem_x=" in line for line in lines[:3]), "\n".join(lines)
    assert "status=fail" in lines[3] and "SSD returns list[dict[str, Tensor]]" in lines[3]
    text = md.read_text()
    assert "| torchvision classification | 2 | 2 (100%) |" in text and "| torchvision detection | 1 | 0 (0%) |" in text
    assert "Trace peak memory against a plain forward pass" in text


def test_dependency_warnings_go_to_the_log_not_the_terminal(tmp_path, capsys, monkeypatch):
    """A FutureWarning raised during the run (as fvcore's torch.jit.script one is) is written to
    OUT/logs/warnings.log; the terminal shows none."""
    import warnings

    import compressor.prepare

    real_trace = compressor.prepare.trace

    def trace(*args, **kwargs):
        warnings.warn("`old_api` is deprecated", FutureWarning, stacklevel=1)
        return real_trace(*args, **kwargs)

    monkeypatch.setattr(compressor.prepare, "trace", trace)
    out = tmp_path / "run"
    assert main(["tests.tiny:TinyNet", "--out", str(out), "--quiet", "--method", "prune", "--budget-flops", "0.8",
                 "--set", "data.input_size=16", "--set", "data.limit_train=64", "--set", "base.epochs=0",
                 "--set", "search.epochs=1", "--set", "finetune.epochs=0", "--set", "export.latency_repeats=0"]) == 0
    assert "Warning" not in capsys.readouterr().err
    assert "FutureWarning: `old_api` is deprecated" in (out / "logs" / "warnings.log").read_text()
