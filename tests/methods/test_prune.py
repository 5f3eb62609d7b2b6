import torch

from compressor.methods.base import SearchContext
from compressor.methods.prune import PruneMethod
from compressor.recipe import BudgetConfig, PruneConfig, RunConfig
from compressor.space import trace
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
    _, taylor, _ = PruneMethod(PruneConfig(importance="taylor", taylor_batches=2), space).search(model, ctx)
    _, magnitude, _ = PruneMethod(PruneConfig(), space).search(model, ctx)
    assert taylor != magnitude
    assert torch.equal(model.stem[1].running_mean, running)  # scoring does not touch BN statistics
    assert all(p.grad is None for p in model.parameters())
    for d in (taylor, magnitude):
        assert d.params(space) / float(space.cost.params()) <= 0.5
        assert all(len(k) % 8 == 0 or len(k) == space.group(n).size for n, k in d.groups.items())
