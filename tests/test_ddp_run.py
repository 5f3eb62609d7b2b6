"""Two processes under torchrun (gloo on CPU) run a one-epoch search and produce a valid decision
(scs with sparse epochs, tas with voting teachers, grow with its two seeds)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compressor.decision import Decision
from compressor.frontend import trace
from tests.tiny import TinyNet

pytestmark = pytest.mark.slow  # subprocesses running the pipeline; CI runs them

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import sys
import torch.distributed as dist
import compressor
from tests.tiny import TINY_RECIPE, TinyNet

recipe = {**TINY_RECIPE, "base": {"epochs": 0}, "search": {"epochs": 1}, "finetune": {"epochs": 0},
          "budget": {"flops": 0.6}}
if sys.argv[2] == "tas":  # architecture gradients and voting teachers are all-reduced
    recipe["method"] = {"name": "tas", "self_distill": {"enabled": True, "warmup": 0.0}}
elif sys.argv[2] == "grow":  # two seeds trained as their own stages, then growth
    recipe["method"] = {"name": "grow"}
    recipe["search"] = {"epochs": 2}
else:  # scs on the sliced active network: each process wraps the epoch's part in DDP
    recipe["method"] = {"name": "scs", "sparse_epochs": True, "init_logit": 0.5}
compressor.compress(TinyNet(), recipe, out=sys.argv[1])
dist.destroy_process_group()
"""


@pytest.mark.parametrize("method,port", [("scs", 29533), ("tas", 29534), ("grow", 29535)])
def test_torchrun_two_processes(tmp_path, method, port):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(port), str(script), str(tmp_path / "out"), method],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["environment"]["processes"] == 2
    decision = Decision.from_dict(report["decision"])
    space = trace(TinyNet().eval(), torch.randn(1, 3, 16, 16))
    decision.validate(space)
    assert decision.flops(space) / float(space.cost.flops()) <= 0.6
    if method != "grow":
        assert len(report["history"]["search"]) == 1
