"""What the trace holds: labels stored once per channel, one unit where nothing can be removed,
one atom for a parameter an unknown op ties whole, reshape sites kept small.  Each is a memory
saving that must not change the space."""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compressor.decision import random_decision
from compressor.surgery import slice_model
from compressor.space import build_space
from compressor.space import tracer as tracer_module
from compressor.space.labels import atom_counts, compact, core
from tests.conftest import rel_diff, round_trip
from tests.space.test_coupling import Attention


def test_a_label_is_stored_once_along_the_dims_it_repeats_along():
    lab = torch.arange(6).reshape(1, 6, 1, 1).expand(2, 6, 32, 32).clone()
    stored = compact(lab)
    assert torch.equal(stored, lab)
    assert stored.untyped_storage().nbytes() == 6 * 8
    small, mult = core(stored)
    assert tuple(small.shape) == (1, 6, 1, 1) and mult == 2 * 32 * 32
    atoms, counts = atom_counts(stored)
    assert atoms.tolist() == list(range(6)) and counts.tolist() == [2 * 32 * 32] * 6
    varied = lab.clone()
    varied[1, 2, 3, 4] = 99  # no longer constant along any dim of size > 1
    assert compact(varied).untyped_storage().nbytes() == varied.numel() * 8


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        y = self.b(F.relu(self.bn(self.a(x))))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


def test_feature_map_labels_cost_their_channels_not_their_pixels(monkeypatch):
    stored = []
    set_label = tracer_module.Trace.set_label

    def record(self, t, lab):
        set_label(self, t, lab)
        if isinstance(t, torch.Tensor) and t in self.labels:
            stored.append(self.labels[t].untyped_storage().nbytes())

    monkeypatch.setattr(tracer_module.Trace, "set_label", record)
    build_space(ConvNet().eval(), torch.randn(1, 3, 64, 64))
    assert stored and max(stored) <= 16 * 8  # a 16-channel 64x64 map: 16 atoms, not 65536


class MaskedAttention(nn.Module):
    """Attention logits plus a float mask buffer shared by every head: each element of the
    buffer is pinned (it is spread over the heads), so nothing of it can ever be removed."""

    def __init__(self, dim=16, heads=4, tokens=64):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("mask", torch.randn(tokens, tokens))
        self.head = nn.Linear(dim, 3)

    def forward(self, t):
        b, n, c = t.shape
        q, k, v = self.qkv(t).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1) + self.mask).softmax(-1) @ v
        return self.head(self.proj(a.transpose(1, 2).reshape(b, n, c)).mean(1))


def test_a_group_nothing_can_remove_is_one_unit():
    space, _, _, ys, yg = round_trip(MaskedAttention(), torch.randn(2, 64, 16))
    (mask_group,) = [g for g in space["channels"].groups if "mask" in g.producers]
    assert mask_group.size == 1 and not mask_group.prunable
    assert space["channels"].size < 64 * 64
    assert rel_diff(ys, yg) < 1e-5


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(5, 6)
        self.rnn = nn.LSTM(6, 32, batch_first=True)  # one aten op with no rule of ours
        self.fc = nn.Linear(32, 2)

    def forward(self, x):
        return self.fc(self.rnn(self.embed(x))[0][:, -1])


def test_a_parameter_an_unknown_op_ties_whole_is_one_atom():
    net = Recurrent().eval()
    space, _, _, ys, yg = round_trip(net, torch.randn(2, 7, 5))
    ps = space["channels"].param_slices["rnn.weight_ih_l0"]
    assert ps.dense is not None and 0 in ps.dense.strides  # one unit, stored once
    assert float(space.cost.params()) == sum(p.numel() for p in net.parameters())
    assert rel_diff(ys, yg) < 1e-5


def test_re_rooting_reshape_sites_changes_nothing(monkeypatch):
    model, x = Attention().eval(), torch.randn(1, 3, 8, 8)
    reference = build_space(model, x)
    init = tracer_module.Trace.__init__

    def tiny_budget(self, *args):
        init(self, *args)
        self._reshape_budget = 0  # re-root every site at every new one

    monkeypatch.setattr(tracer_module.Trace, "__init__", tiny_budget)
    shrunk = build_space(model, x)
    assert [(g.name, g.size, g.frozen) for g in shrunk["channels"].groups] == \
        [(g.name, g.size, g.frozen) for g in reference["channels"].groups]
    assert len(shrunk["channels"].reshapes) == len(reference["channels"].reshapes) > 0
    # a dim along which the final units do not vary is no information: compare what is left
    for a, b in zip(shrunk["channels"].reshapes, reference["channels"].reshapes):
        assert (a.module, a.shape) == (b.module, b.shape)
        assert np.array_equal(_varying_part(a.atoms), _varying_part(b.atoms))
    decision = random_decision(reference, 0.5, seed=1)
    with torch.no_grad():
        ys = slice_model(model, shrunk, decision)(x)
        assert torch.equal(ys, slice_model(model, reference, decision)(x))


def _varying_part(units: np.ndarray) -> np.ndarray:
    for d in range(units.ndim):
        if (units == units.take([0], axis=d)).all():
            units = units.take([0], axis=d)
    return units
