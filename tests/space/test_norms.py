"""Normalisations over channels (LayerNorm, GroupNorm, RMSNorm) are pruned exactly: the gated
model computes their statistics over the kept channels, so slicing reproduces it."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor.frontend import trace
from compressor.gates import attach_gates
from compressor.gates.norms import MaskedNormWeight
from tests.conftest import rel_diff, round_trip


class ChannelsLastLayerNorm(nn.LayerNorm):
    """timm's LayerNorm2d: a channels-first map normalised by a functional call on a permute."""

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class NormNet(nn.Module):
    """A residual stream normalised by ``norm`` before each branch (pre-norm, as in ConvNeXt)."""

    def __init__(self, norm, dim=16):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 3, padding=1)
        self.norm = norm
        self.a = nn.Conv2d(dim, 24, 1)
        self.b = nn.Conv2d(24, dim, 1)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        s = self.stem(x)
        s = s + self.b(F.gelu(self.a(self.norm(s))))
        return self.head(s.mean((2, 3)))


class TokenNet(nn.Module):
    """Tokens normalised over their last dim by ``norm`` (ViT's LayerNorm, an RMSNorm)."""

    def __init__(self, norm, dim=16):
        super().__init__()
        self.embed = nn.Linear(12, dim)
        self.norm = norm
        self.fc1 = nn.Linear(dim, 24)
        self.fc2 = nn.Linear(24, dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        t = self.embed(x)
        t = t + self.fc2(F.gelu(self.fc1(self.norm(t))))
        return self.head(self.norm(t).mean(1))


def _perturbed(norm: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in norm.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return norm


CASES = {
    "layer_norm": lambda: TokenNet(_perturbed(nn.LayerNorm(16))),
    "rms_norm": lambda: TokenNet(_perturbed(nn.RMSNorm(16))),
    "layer_norm_2d": lambda: NormNet(_perturbed(ChannelsLastLayerNorm(16))),
    "group_norm_1": lambda: NormNet(_perturbed(nn.GroupNorm(1, 16))),
    "group_norm_4": lambda: NormNet(_perturbed(nn.GroupNorm(4, 16))),
    "group_norm_per_channel": lambda: NormNet(_perturbed(nn.GroupNorm(16, 16))),
}


def _stream(space):
    return next(g for g in space["channels"].groups if {"embed.weight", "stem.weight"} & set(g.producers))


def _input(name):
    return torch.randn(2, 7, 12) if name in ("layer_norm", "rms_norm") else torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_sliced_norm_equals_gated_norm(name, seed):
    torch.manual_seed(seed)
    model = CASES[name]()
    space, d, sliced, ys, yg = round_trip(model, _input(name), seed=seed)
    stream = _stream(space)
    assert stream.prunable, stream.frozen
    kept = len(d["channels"][stream.name])
    assert sliced.norm.weight.shape[0] == kept * int(stream.channels[0]) < 16
    assert rel_diff(ys, yg) < 1e-5


def test_group_norm_keeps_the_same_positions_in_every_group():
    space, d, sliced, _, _ = round_trip(NormNet(nn.GroupNorm(4, 16)), torch.randn(2, 3, 8, 8))
    stream = _stream(space)
    assert stream.size == 4 and int(stream.channels[0]) == 4   # position i of each of 4 groups
    assert sliced.norm.num_groups == 4 and sliced.norm.num_channels == 4 * len(d["channels"][stream.name])


def test_per_channel_group_norm_loses_its_groups_with_its_channels():
    space, d, sliced, _, _ = round_trip(NormNet(nn.GroupNorm(16, 16)), torch.randn(2, 3, 8, 8))
    kept = len(d["channels"][_stream(space).name])
    assert sliced.norm.num_groups == sliced.norm.num_channels == kept


def test_a_norm_without_weight_still_ties_its_channels():
    """Without an affine weight there is nothing to carry the gates: the channels stay tied."""
    space = trace(TokenNet(nn.LayerNorm(16, elementwise_affine=False)).eval(), torch.randn(1, 7, 12))
    stream = next(g for g in space["channels"].groups if "embed.weight" in g.producers)
    assert not stream.prunable and "layer_norm" in stream.frozen


def test_soft_gates_weigh_the_statistics():
    """Soft gates define weighted statistics: a gate of 0.5 counts a channel half; gradients
    reach the gates through the statistics; every gate at 1 leaves the weight a plain tensor."""
    torch.manual_seed(0)
    model = TokenNet(nn.LayerNorm(16)).eval()
    x = torch.randn(2, 7, 12)
    space = trace(model, x)
    gates = attach_gates(model, space)
    assert type(model.norm.weight) is not MaskedNormWeight
    stream = _stream(space)
    units = torch.ones(space["channels"].size, requires_grad=True)
    gates.set({"channels": units})
    assert isinstance(model.norm.weight, MaskedNormWeight)
    h = gates.model.embed(x)
    out = model.norm(h)
    ref = F.layer_norm(h, (16,), model.norm.weight.as_subclass(torch.Tensor), model.norm.bias)
    assert rel_diff(out.detach(), ref.detach()) < 1e-5   # gates at 1 with gradients on: the plain statistics
    values = torch.ones(space["channels"].size)
    values[stream.offset:stream.offset + 16] = torch.linspace(0.1, 1.0, 16)
    values.requires_grad_(True)
    gates.set({"channels": values})
    w = values[stream.offset:stream.offset + 16]
    mean = (h * w).sum(-1, keepdim=True) / w.sum()
    var = ((h - mean) ** 2 * w).sum(-1, keepdim=True) / w.sum()
    expect = (h - mean) / torch.sqrt(var + model.norm.eps) * model.norm.weight.as_subclass(torch.Tensor) \
        + model.norm.bias
    assert rel_diff(model.norm(h).detach(), expect.detach()) < 1e-5
    model.norm(h).sum().backward()
    assert values.grad[stream.offset:stream.offset + 16].abs().sum() > 0
    gates.remove()


def test_masked_norm_under_bf16_autocast():
    """Under CPU autocast the masked norm returns what the native norm returns there, and
    agrees with the float32 gated model to bf16 precision."""
    torch.manual_seed(0)
    model = TokenNet(nn.LayerNorm(16)).eval()
    x = torch.randn(2, 7, 12)
    space = trace(model, x)
    gates = attach_gates(model, space)
    units = torch.ones(space["channels"].size)
    units[::3] = 0
    gates.set({"channels": units})
    with torch.no_grad():
        y32 = gates.model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = gates.model.embed(x)
            out, ref = model.norm(h), F.layer_norm(h, (16,))
            y16 = gates.model(x)
    assert h.dtype == torch.bfloat16 and out.dtype == ref.dtype
    assert rel_diff(y16.float(), y32) < 5e-2
    gates.remove()
