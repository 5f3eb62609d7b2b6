"""The cost model: exact against fvcore and parameter counts, and differentiable."""
import pytest
import torch

from compressor.decision import random_decision
from compressor.export import slice_model
from compressor.export.flops import fvcore_flops
from compressor.space import trace
from compressor.zoo import create_model


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.9])
def test_flops_and_params_of_decisions_match_the_sliced_model(ratio):
    model = create_model("mobilenet_v2").eval()
    x = torch.randn(1, 3, 64, 64)
    space = trace(model, x)
    d = random_decision(space, ratio, seed=3)
    sliced = slice_model(model, space, d)
    assert d.flops(space) == pytest.approx(fvcore_flops(sliced, x), rel=1e-3)
    assert round(d.params(space)) == sum(p.numel() for p in sliced.parameters())


def test_gradient_matches_finite_differences():
    """FLOPs are multilinear in the keep values, so a unit step is an exact difference."""
    model = create_model("resnet18").eval()
    space = trace(model, torch.randn(1, 3, 32, 32), validate=False)
    keep = torch.full((space.num_units,), 0.5, dtype=torch.double, requires_grad=True)
    blocks = torch.full((len(space.blocks),), 0.5, dtype=torch.double, requires_grad=True)
    flops = space.cost.flops(keep, blocks)
    flops.backward()
    g = space.groups[1]
    i = g.offset + 3
    step = keep.detach().clone()
    step[i] += 1.0
    flops = flops.detach()
    assert float(space.cost.flops(step, blocks.detach()) - flops) == pytest.approx(float(keep.grad[i]), rel=1e-9)
    bstep = blocks.detach().clone()
    bstep[0] += 1.0
    assert float(space.cost.flops(keep.detach(), bstep) - flops) == pytest.approx(float(blocks.grad[0]), rel=1e-9)
    assert float(blocks.grad[0]) > 0


def test_fraction_is_cost_over_full_cost():
    import torch
    from torch import nn

    from compressor.space import trace

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    space = trace(model, torch.randn(1, 3, 10, 10))
    keep = torch.rand(space.num_units, dtype=torch.double, requires_grad=True)
    for what, cost in (("flops", space.cost.flops), ("params", space.cost.params)):
        frac = space.cost.fraction(what, keep)
        assert torch.allclose(frac, cost(keep) / cost())
        assert float(space.cost.fraction(what)) == 1.0
    frac.backward()
    assert keep.grad is not None and keep.grad.abs().sum() > 0
