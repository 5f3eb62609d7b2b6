import pytest
import torch

from compressor.gates.outputs import gated_output
from compressor.decision import Decision, random_decision
from compressor.surgery import slice_model
from compressor.frontend import trace


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-12)


def round_trip(model: torch.nn.Module, x: torch.Tensor, ratio: float = 0.5, seed: int = 0,
               decision: Decision | None = None):
    """Trace, decide, slice; return (space, decision, sliced output, hard-gated output)."""
    model = model.eval()
    space = trace(model, x[:1])
    decision = decision or random_decision(space, ratio, seed=seed)
    sliced = slice_model(model, space, decision).eval()
    with torch.no_grad():
        ys = sliced(x)
    yg = gated_output(model, space, decision, x)
    return space, decision, sliced, ys, yg
