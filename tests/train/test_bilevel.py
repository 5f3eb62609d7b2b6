"""The second-order (DARTS) hypergradient against an exact double-backward computation."""
import torch
import torch.nn.functional as F
from torch.func import functional_call

from compressor.train.bilevel import ArchitectureStep


class Gated(torch.nn.Module):
    """Two linear layers with a sigmoid gate over the hidden units (the architecture)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(6, 5), torch.nn.Linear(5, 3)
        self.alpha = torch.nn.Parameter(torch.randn(5))

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)) * torch.sigmoid(self.alpha))


def _setup():
    torch.manual_seed(0)
    model = Gated().double()
    xt, yt = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    xv, yv = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    weights = [p for n, p in model.named_parameters() if n != "alpha"]
    opt = torch.optim.SGD(weights, lr=0.3, momentum=0.9, weight_decay=1e-2)
    F.cross_entropy(model(xt), yt).backward()  # one real step, so momentum buffers exist
    opt.step()
    opt.zero_grad()
    return model, opt, (xt, yt), (xv, yv)


def test_second_order_matches_exact_hypergradient():
    model, opt, (xt, yt), (xv, yv) = _setup()
    arch = ArchitectureStep([model.alpha], order=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _, (approx,) = arch.second_order_gradient(lambda: F.cross_entropy(model(xv), yv),
                                              lambda: F.cross_entropy(model(xt), yt), opt)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # weights restored

    # exact: w'(alpha) = w - lr * (grad_w L_train(w, alpha) + momentum * buffer + wd * w)
    names = [n for n, _ in model.named_parameters() if n != "alpha"]
    w = [before[n] for n in names]
    alpha = before["alpha"].clone().requires_grad_(True)

    def loss(params, x, y):
        return F.cross_entropy(functional_call(model, {**dict(zip(names, params)), "alpha": alpha}, (x,)), y)

    wr = [t.clone().requires_grad_(True) for t in w]
    g = torch.autograd.grad(loss(wr, xt, yt), wr, create_graph=True)
    group = opt.param_groups[0]
    unrolled = [t - group["lr"] * (gi + group["momentum"] * opt.state[p]["momentum_buffer"] + group["weight_decay"] * t)
                for t, gi, p in zip(wr, g, [dict(model.named_parameters())[n] for n in names])]
    (exact,) = torch.autograd.grad(loss(unrolled, xv, yv), alpha)
    rel = float((approx - exact).norm() / exact.norm())
    assert rel < 1e-3, rel
    # and the first-order gradient is measurably different (the test could fail)
    (first,) = torch.autograd.grad(loss(w, xv, yv), alpha)
    assert float((first - exact).norm() / exact.norm()) > 1e-2


def test_step_moves_only_the_architecture():
    model, opt, (xt, yt), (xv, yv) = _setup()
    arch = ArchitectureStep([model.alpha], order=1, lr=0.01)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if n != "alpha"}
    a0 = model.alpha.detach().clone()
    arch.step(lambda: F.cross_entropy(model(xv), yv))
    assert not torch.equal(a0, model.alpha)
    assert all(torch.equal(weights[n], p) for n, p in model.named_parameters() if n != "alpha")
    assert all(p.grad is None for n, p in model.named_parameters() if n != "alpha")
