"""Weight-standardised convolutions (timm's StdConv2d / ScaledStdConv2d: NF nets, BiT) are pruned
exactly: the tracer sees the standardised weight as its parameter, and the gated model computes
each row's statistics over the kept inputs, so slicing reproduces it."""
import pytest
import torch
import torch.nn.functional as F
from timm.layers import ScaledStdConv2d, StdConv2d
from torch import nn

from compressor.surgery.widen import normalised_groups
from compressor.frontend import trace
from compressor.gates import attach_gates
from compressor.gates.standardised import StandardisedWeight
from tests.conftest import rel_diff, round_trip


class StdNet(nn.Module):
    """A standardised stem, a residual pair of scaled standardised convs (one grouped), a head."""

    def __init__(self, groups: int = 1):
        super().__init__()
        self.stem = StdConv2d(3, 16, 3, padding=1)
        self.a = ScaledStdConv2d(16, 24, 3, padding=1)
        self.b = ScaledStdConv2d(24, 24, 3, padding=1, groups=groups)
        self.c = ScaledStdConv2d(24, 16, 1)
        self.head = nn.Linear(16, 5)
        with torch.no_grad():  # gains away from 1, so a mislaid gain shows
            for m in (self.a, self.b, self.c):
                m.gain.uniform_(0.5, 1.5)

    def forward(self, x):
        s = F.relu(self.stem(x))
        s = s + self.c(F.relu(self.b(F.relu(self.a(s)))))
        return self.head(s.mean((2, 3)))


@pytest.mark.parametrize("groups", [1, 4, 24])
@pytest.mark.parametrize("seed", [0, 1])
def test_sliced_standardised_conv_equals_gated(groups, seed):
    torch.manual_seed(seed)
    space, d, sliced, ys, yg = round_trip(StdNet(groups), torch.randn(2, 3, 10, 10), seed=seed)
    assert space["channels"].standardised == {"stem.weight", "a.weight", "b.weight", "c.weight"}
    stream = space["channels"].group("stem")
    assert stream.prunable and space["channels"].group("a").prunable, (stream.frozen, space["channels"].group("a").frozen)
    assert sliced.c.weight.shape[0] == sliced.stem.weight.shape[0] == len(d["channels"]["stem"]) < 16
    assert sliced.a.gain.shape[0] == len(d["channels"]["a"]) * int(space["channels"].group("a").channels[0]) < 24
    assert rel_diff(ys, yg) < 1e-5


def test_masking_the_weight_before_the_standardisation_would_not_be_exact():
    """The reason for the mechanism: zeroed inputs counted in a row's statistics change it."""
    torch.manual_seed(0)
    conv = ScaledStdConv2d(8, 4, 3).requires_grad_(False)
    keep = torch.tensor([1.0, 0, 1, 1, 0, 1, 1, 0]).view(1, 8, 1, 1)
    masked = F.batch_norm(conv.weight.mul(keep).reshape(1, 4, -1), None, None, training=True, eps=conv.eps)
    idx = keep.flatten().bool()
    kept = F.batch_norm(conv.weight[:, idx].reshape(1, 4, -1), None, None, training=True, eps=conv.eps)
    assert rel_diff(masked.reshape(4, 8, 3, 3)[:, idx].reshape(1, 4, -1), kept) > 0.05


def test_soft_gates_weigh_the_statistics_and_reach_the_gates():
    torch.manual_seed(0)
    model = StdNet().eval()
    x = torch.randn(2, 3, 10, 10)
    space = trace(model, x)
    gates = attach_gates(model, space)
    assert type(model.a.weight) is nn.Parameter   # gates at 1: the plain weight
    with torch.no_grad():
        y1 = gates.model(x)
    units = torch.ones(space["channels"].size, requires_grad=True)
    gates.set({"channels": units})
    assert isinstance(model.a.weight, StandardisedWeight)
    assert rel_diff(gates.model(x).detach(), y1) < 1e-5   # gates at 1 with gradients on
    stem = space["channels"].group("stem")
    values = torch.ones(space["channels"].size)
    values[stem.offset:stem.offset + stem.size] = torch.linspace(0.1, 1.0, stem.size)
    values.requires_grad_(True)
    gates.set({"channels": values})
    g = values[stem.offset:stem.offset + stem.size].view(1, -1, 1, 1)
    p = model.a.parametrizations.weight.original
    mean = (p * g).sum((1, 2, 3), keepdim=True) / (g.sum() * 9)
    var = ((p - mean) ** 2 * g).sum((1, 2, 3), keepdim=True) / (g.sum() * 9)
    expect = (p - mean) / torch.sqrt(var + model.a.eps) * (model.a.gain * model.a.scale) * g
    got = F.batch_norm(model.a.weight.reshape(1, 24, -1), None, None, weight=(model.a.gain * model.a.scale).view(-1),
                       training=True, momentum=0.0, eps=model.a.eps).reshape_as(model.a.weight)
    assert rel_diff(got.detach(), expect.detach()) < 1e-5
    gates.model(x).sum().backward()
    assert values.grad[stem.offset:stem.offset + stem.size].abs().min() > 0
    gates.remove()


def test_standardised_inputs_are_not_grown():
    """Growing doubles a row's inputs, and its statistics would mix both seeds: say so."""
    space = trace(StdNet().eval(), torch.randn(1, 3, 10, 10))
    why = normalised_groups(space)
    assert "weight standardisation" in why["stem"] and "weight standardisation" in why["a"]


def test_a_weight_standardised_by_hand_still_ties_its_channels():
    """Written as elementary ops (mean/var over the weight), there is no call to catch: the conv's
    channels stay tied, and validation keeps the model exact."""

    class HandStd(nn.Conv2d):
        def forward(self, x):
            w = self.weight
            w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.var((1, 2, 3), keepdim=True) + 1e-5).sqrt()
            return F.conv2d(x, w, self.bias, padding=1)

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), HandStd(8, 8, 3), nn.ReLU(),
                          nn.Conv2d(8, 4, 1)).eval()
    space, d, sliced, ys, yg = round_trip(model, torch.randn(2, 3, 8, 8))
    assert not space["channels"].standardised
    assert not space["channels"].group("0").prunable
    assert rel_diff(ys, yg) < 1e-5


def test_a_one_by_one_standardised_conv_keeps_two_inputs():
    """A row of one element cannot be standardised (torch raises): the smallest decision keeps
    two inputs of a 1x1 standardised conv and still slices and runs."""
    from compressor.decision import Decision

    torch.manual_seed(0)
    model = StdNet().eval()
    x = torch.randn(2, 3, 10, 10)
    space = trace(model, x[:1])
    assert int(space["channels"].group("b").pinned.sum()) == 2   # c is 1x1 over b's channels
    smallest = Decision({"channels": {g.name: (sorted(set(map(int, g.pinned.nonzero()[0]))) or [0])
                                      for g in space["channels"].groups if g.prunable}})
    _, _, sliced, ys, yg = round_trip(model, x, decision=smallest)
    assert sliced.c.weight.shape[1] == 2
    assert rel_diff(ys, yg) < 1e-5
