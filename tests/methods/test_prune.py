import pytest
import torch

from compressor.decision import Decision
from compressor.frontend import trace
from compressor.importance import drop_loss
from compressor.methods import PruneConfig
from compressor.methods.base import SearchContext
from compressor.methods.prune import PruneMethod
from compressor.recipe import BudgetConfig, RecipeError, RunConfig
from compressor.train import Trainer
from tests.tiny import TinyNet


def test_taylor_prune_uses_gradients_and_meets_budget():
    torch.manual_seed(0)
    model = TinyNet().eval()
    space = trace(model, torch.randn(1, 3, 16, 16))
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 3, 16, 16, generator=g), torch.randint(0, 10, (64,), generator=g))
    ctx = SearchContext(Trainer(RunConfig(progress=False)), data, None, 16, BudgetConfig(params=0.5), 8, 0)
    running = model.stem[1].running_mean.clone()
    taylor = PruneMethod(PruneConfig(importance="taylor", taylor_batches=2), space).search(model, ctx).decision
    magnitude = PruneMethod(PruneConfig(), space).search(model, ctx).decision
    assert taylor != magnitude
    assert torch.equal(model.stem[1].running_mean, running)  # scoring does not touch BN statistics
    assert all(p.grad is None for p in model.parameters())
    for d in (taylor, magnitude):
        assert d.params(space) / float(space.cost.params()) <= 0.5
        assert all(len(k) % 8 == 0 or len(k) == space["channels"].group(n).size for n, k in d["channels"].items())


def test_prune_removes_the_block_whose_skipping_costs_least():
    torch.manual_seed(0)
    model = TinyNet().eval()
    with torch.no_grad():
        model.stage1[1].bn2.weight.zero_()  # this branch adds nothing: skipping it is free
        model.stage1[1].bn2.bias.zero_()
        model.head.weight.mul_(100)  # confident: the loss on its own predictions is about 0
    x = torch.randn(2, 3, 16, 16)
    before = model(x)
    space = trace(model, x[:1])
    inputs = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # its own predictions as labels: skipping a real branch only costs
        data = torch.utils.data.TensorDataset(inputs, model(inputs).argmax(1))
    scores = drop_loss(model, space, "depth", [(inputs, data.tensors[1])])
    assert scores[1] == 0 and (scores[[0, 2]] > 0).all()
    ctx = SearchContext(Trainer(RunConfig(progress=False)), data, None, 16, BudgetConfig(flops=0.6), 1, 0)
    result = PruneMethod(PruneConfig(blocks=1, block_batches=2), space).search(model, ctx)
    decision, summary = result.decision, result.summary
    assert decision["depth"] == summary["blocks_removed"] == ["stage1.1#0"]
    assert decision.flops(space) / float(space.cost.flops()) <= 0.6
    assert torch.equal(model(x), before)  # scoring left the model as it was
    with pytest.raises(RecipeError, match="method.blocks: .* only 3 removable residual blocks"):
        PruneMethod(PruneConfig(blocks=4), space)


def test_the_early_budget_check_removes_only_as_many_blocks_as_prune_will():
    """prune removes ``blocks`` blocks, chosen after training: the early check counts the costliest
    that many, not all of them (it used to pass budgets only removing every block could meet)."""
    from compressor.budget import BudgetError, smallest_decision
    from compressor.prepare import prepare
    from tests.tiny import TINY_RECIPE, Block

    class Uneven(torch.nn.Module):  # a block at full resolution costs 4x the one after the stride
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1, bias=False),
                                            torch.nn.BatchNorm2d(16), torch.nn.ReLU())
            self.big, self.down = Block(16), torch.nn.Conv2d(16, 16, 3, stride=2, padding=1)
            self.small, self.head = Block(16), torch.nn.Linear(16, 10)

        def forward(self, x):
            return self.head(self.small(self.down(self.big(self.stem(x)))).mean((2, 3)))

    space = trace(Uneven().eval(), torch.randn(1, 3, 16, 16))
    fixed = PruneMethod(PruneConfig(blocks=1), space).fixed()
    assert fixed["depth"] == ["big#0"]
    full = float(space.cost.flops())
    floors = [smallest_decision(space, ["channels"], fixed=Decision({"depth": d}), round_to=1).flops(space) / full
              for d in (["big#0", "small#0"], ["big#0"])]
    assert floors[0] < floors[1]
    recipe = {**TINY_RECIPE, "method": {"name": "prune", "blocks": 1}}
    with pytest.raises(BudgetError, match="cannot be met"):
        prepare(Uneven(), {**recipe, "budget": {"flops": (floors[0] + floors[1]) / 2}})
    prepare(Uneven(), {**recipe, "budget": {"flops": floors[1] * 1.05}})
