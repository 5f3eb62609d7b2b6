"""One budget fit for every decision builder: the bisection lands at or under the target, and the
fill brings it back within 2% of it (fvcore on the sliced model), widths rounded or not."""
import numpy as np
import pytest
import torch

from compressor.budget import BudgetError, decide
from compressor.export.flops import fvcore_flops
from compressor.frontend import trace
from compressor.importance import get_importance
from compressor.surgery import slice_model
from compressor.zoo import create_model_for_size, example_input


@pytest.fixture(scope="module", params=["deit_tiny_patch16_224", "mobilenet_v2", "resnet50"])
def model(request):
    torch.manual_seed(0)
    net, _ = create_model_for_size(request.param, None)
    net.eval()
    x = example_input(request.param, net)
    space = trace(net, x)
    return net, x, space, get_importance("magnitude")(net, space), fvcore_flops(net, x)


@pytest.mark.parametrize("target", [0.5, 0.25])
@pytest.mark.parametrize("round_to", [None, 16])
def test_budgets_land_within_two_percent_of_the_target(model, target, round_to):
    net, x, space, scores, full = model
    decision = decide(space, scores, target, round_to=round_to)
    fraction = fvcore_flops(slice_model(net, space, decision), x) / full
    assert target * 0.98 <= fraction <= target, fraction
    bare = decide(space, scores, target, round_to=round_to, fill=False)
    assert fvcore_flops(slice_model(net, space, bare), x) / full <= fraction + 1e-12  # the fill only adds


class TwoBranches(torch.nn.Module):
    """A cheap (3x3) and a dear (7x7) branch side by side, concatenated."""

    def __init__(self):
        super().__init__()
        self.cheap = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.dear = torch.nn.Conv2d(3, 16, 7, padding=3)
        self.head = torch.nn.Conv2d(32, 4, 1)

    def forward(self, x):
        return self.head(torch.cat([self.cheap(x), self.dear(x)], 1)).mean((2, 3))


def test_the_fill_adds_back_by_score_per_unit_of_cost():
    """Equal scores: the bisection removes in unit order (the cheap branch first, then some of the
    dear one); the budget it leaves is filled with the units that cost least per unit of score:
    cheap ones come back, no dear one does."""
    model = TwoBranches().eval()
    space = trace(model, torch.randn(1, 3, 8, 8), kinds=["channels"])
    scores = {"channels": np.ones(space["channels"].size)}
    bare = decide(space, scores, 0.5, fill=False)
    filled = decide(space, scores, 0.5)
    kept = {n: len(filled["channels"].get(n, range(16))) for n in ("cheap", "dear")}
    before = {n: len(bare["channels"].get(n, range(16))) for n in ("cheap", "dear")}
    assert before["cheap"] < 16 and before["dear"] < 16
    assert kept["cheap"] > before["cheap"] and kept["dear"] == before["dear"]
    assert bare.flops(space) <= filled.flops(space) <= 0.5 * space.cost.full("flops")
    with pytest.raises(BudgetError, match="ask for at least"):
        decide(space, scores, 0.0001)
