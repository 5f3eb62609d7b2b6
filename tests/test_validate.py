"""Invariants 1 and 2 are checked by `trace` itself: what breaks them is frozen or dropped, with the reason."""
import pytest
import torch
from torch import nn

from compressor.gates.outputs import gated_output
from compressor.decision import random_decision
from compressor.surgery import slice_model
from compressor.gates import attach_gates
from compressor.frontend import trace
from compressor.space import TraceError
from tests.conftest import rel_diff


class PeeksAtParameters(nn.Module):
    """Model code that notices a parametrized weight (it looks into ``_parameters``): gating
    ``c2.weight`` changes the output even with every gate at 1."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), \
            nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        if "weight" not in self.c2._parameters:
            h = h * 2
        return self.fc(torch.relu(self.c3(h)).mean((2, 3)))


class Branch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


class TracesDifferently(nn.Module):
    """A residual owner whose fx graph is not what it runs eagerly (its forward asks whether it is
    being fx-traced): its depth gates cannot be inserted faithfully."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b1, self.b2 = Branch(), Branch()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        y = self.b1(x)
        if torch.fx._symbolic_trace.is_fx_tracing():
            y = y * 0.5
        x = x + y
        x = x + self.b2(x)
        return self.fc(x.mean((2, 3)))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 16, 3, padding=1)
        self.mid = nn.Conv2d(16, 24, 3, padding=1)
        self.fc = nn.Linear(24, 5)

    def forward(self, x, y):
        h = torch.relu(self.mid(torch.relu(self.a(x) + self.b(y))))
        return self.fc(h.mean((2, 3)))


def test_a_weight_whose_gate_changes_the_model_is_frozen_by_trace():
    model = PeeksAtParameters().eval()
    x = torch.randn(2, 3, 12, 12)
    space = trace(model, x[:1])
    c1 = space["channels"].group("c1")  # the units gated on c2.weight (its input channels)
    assert not c1.prunable and "gating c2.weight changes the model" in c1.frozen
    assert space["channels"].group("c2").prunable and space["channels"].group("c3").prunable
    with torch.no_grad():
        y = model(x)
    assert torch.equal(gated_output(model, space, None, x), y)  # invariant 1 now holds
    decision = random_decision(space, 0.5, seed=0)
    sliced = slice_model(model, space, decision).eval()
    with torch.no_grad():
        assert rel_diff(sliced(x), gated_output(model, space, decision, x)) < 1e-5


def test_an_owner_fx_cannot_reproduce_loses_its_blocks():
    model = TracesDifferently().eval()
    space = trace(model, torch.randn(1, 3, 8, 8))
    assert space["depth"].blocks == () and len(space["depth"].dropped) == 2
    assert all("changes the model" in why for why in space["depth"].dropped.values())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(gated_output(model, space, None, x), model(x))


def test_several_inputs_are_passed_as_several_arguments():
    model = TwoInputs().eval()
    x = (torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8))
    space = trace(model, tuple(t[:1] for t in x))
    assert space["channels"].group("a").prunable and space["channels"].group("mid").prunable
    decision = random_decision(space, 0.5, seed=1)
    sliced = slice_model(model, space, decision).eval()
    with torch.no_grad():
        assert rel_diff(sliced(*x), gated_output(model, space, decision, x)) < 1e-5


def test_weights_gated_only_on_frozen_units_get_no_mask():
    model = PeeksAtParameters().eval()
    space = trace(model, torch.randn(1, 3, 12, 12))
    gates = attach_gates(model, space)
    try:
        masked = {n.replace(".parametrizations", "").rsplit(".original", 1)[0]
                  for n, _ in model.named_parameters() if ".parametrizations." in n}
    finally:
        gates.remove()
    assert masked == {"c3.weight", "fc.weight"}  # c2.weight reads only c1's frozen channels


class SizesFromAnotherModule(nn.Module):
    """Split sizes read from one branch's attribute, assuming the other branch is as wide (a
    pattern from a peer's tests): half of every group passes, a budget decision would not."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 16, 3, padding=1)
        self.p, self.q = nn.Conv2d(16, 8, 1), nn.Conv2d(16, 8, 1)
        self.fc = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = torch.cat([self.a(x), self.b(x)], dim=1)
        left, right = torch.split(h, [self.a.out_channels, self.a.out_channels], dim=1)
        return self.fc(torch.relu(self.p(left) + self.q(right))).mean((2, 3))


def test_validation_catches_a_hidden_equal_width_constraint():
    model = SizesFromAnotherModule().eval()
    space = trace(model, torch.randn(1, 3, 8, 8))
    for name in ("a", "b"):
        assert not space["channels"].group(name).prunable and "split_with_sizes" in space["channels"].group(name).frozen
    assert space["channels"].group("p").prunable  # the rest stays prunable
    for ratio, seed in ((0.3, 0), (0.7, 1)):  # any decision now slices into a working model
        decision = random_decision(space, ratio, seed=seed)
        sliced = slice_model(model, space, decision).eval()
        x = torch.randn(2, 3, 8, 8)
        with torch.no_grad():
            assert rel_diff(sliced(x), gated_output(model, space, decision, x)) < 1e-5


class PerImageDicts(nn.Module):
    """Detection-style output: one dict per image, whose sizes depend on the values."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        scores = self.head(torch.relu(self.conv(x))).amax((1, 2, 3))
        return [{"labels": (s > 0).long().nonzero(), "scores": s[s > 0]} for s in scores.unsqueeze(1)]


def test_an_output_without_a_leading_tensor_is_refused_by_name():
    with pytest.raises(TraceError, match=r"PerImageDicts returns list\[dict\[str, Tensor\(torch.int64\)\]\]"):
        trace(PerImageDicts(), torch.randn(1, 3, 8, 8))
