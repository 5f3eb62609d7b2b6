"""Invariant 6: a run killed (SIGKILL) in the middle of an epoch and resumed ends with the same
decision and the same weights as an uninterrupted run with the same seed (scs, tas with its
architecture optimizer and voting-teacher buffers in the checkpoint, grow killed while its
second seed trains and after growth, scs in grow mode with sparse epochs, and darts's op search)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # subprocesses running the pipeline; CI runs them

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import os, signal, sys
import torch
import compressor
from tests.tiny import TINY_RECIPE, TinyNet

def kill_mid_epoch(stage, epoch, step):
    if sys.argv[2] == "kill" and (stage, epoch, step) == (sys.argv[4], 1, 3):
        os.kill(os.getpid(), signal.SIGKILL)

recipe = dict(TINY_RECIPE)
if sys.argv[3] == "tas":
    recipe["method"] = {"name": "tas", "self_distill": {"enabled": True, "warmup": 0.3}}
if sys.argv[3].startswith("grow"):
    recipe["method"] = {"name": "grow", "scratch_baseline": False}
if sys.argv[3] == "grow-finetune":  # killed after growth: the seeds' checkpoints grow the same model again
    recipe["finetune"] = {**recipe["finetune"], "epochs": 2}
if sys.argv[3] == "darts":  # op search: alpha, the candidates, the architecture optimizer and PC-DARTS's windows
    # K = 8 does not divide the steps per epoch (4), so a resume that lost the windows' place would differ
    recipe["method"] = {"name": "darts", "distill_steps": 10, "warmup": 0.0, "partial_channels": 8}
if sys.argv[3] == "scs-grow":  # grow mode, sparse epochs: the epoch's sub-network is rebuilt on resume
    recipe["method"] = {"name": "scs", "mode": "grow", "sparse_epochs": True, "init_logit": 0.5,
                        "grow_epochs": 2}  # paced as the scs-grow recipe is
torch.manual_seed(0)  # the user's model: its initial weights are the caller's to seed
compressor.compress(TinyNet(), recipe, out=sys.argv[1], resume=sys.argv[2] == "resume",
                    callbacks=(kill_mid_epoch,))
"""


STAGE = {"scs": "search", "tas": "search", "grow": "seed_b", "grow-finetune": "finetune",
         "scs-grow": "search", "darts": "search"}  # where the kill lands


def _run(out, mode, method):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", SCRIPT, str(out), mode, method, STAGE[method]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("method", ["scs", "tas", "grow", "grow-finetune", "scs-grow", "darts"])
def test_killed_run_resumes_to_the_same_result(tmp_path, method):
    straight = _run(tmp_path / "a", "plain", method)
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = _run(tmp_path / "b", "kill", method)
    assert killed.returncode == -9
    assert not (tmp_path / "b" / "report.json").exists()
    assert (tmp_path / "b" / "checkpoints" / f"{STAGE[method]}.pt").exists()
    resumed = _run(tmp_path / "b", "resume", method)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (json.loads((tmp_path / d / "compressor.json").read_text())["decision"] for d in ("a", "b"))
    assert a == b
    wa, wb = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("a", "b"))
    assert all((wa[k] == wb[k]).all() for k in wa)
