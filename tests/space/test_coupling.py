"""One test per coupling kind: the groups are right and slicing equals hard gating."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor.frontend import trace
from compressor.space import TraceError, build_space
from tests.conftest import rel_diff, round_trip


class ResidualAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        s = F.relu(self.stem(x))
        s = s + self.bn(self.b(F.relu(self.a(s))))
        return self.head(s)


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 10, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(torch.cat([F.relu(self.a(x)), torch.sigmoid(self.b(x))], dim=1))


class Split(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 12, 3, padding=1)
        self.left = nn.Conv2d(6, 5, 1)
        self.right = nn.Conv2d(6, 5, 1)

    def forward(self, x):
        l, r = self.a(x).chunk(2, dim=1)
        return self.left(l) * self.right(r)


class MixedKernels(nn.Module):
    """Unequal split sizes held in a list attribute (timm's MixedConv2d pattern)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 12, 1)
        self.splits = [4, 8]
        self.k3 = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.k5 = nn.Conv2d(8, 8, 5, padding=2, groups=8)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        left, right = torch.split(self.a(x), self.splits, 1)
        return self.head(torch.cat([self.k3(left), self.k5(right)], 1))


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(F.relu(self.g(F.relu(self.a(x)))))


class FewWideGroups(nn.Module):
    """Two groups of eight channels, split-attention style: positions are the units."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.g = nn.Conv2d(16, 16, 3, padding=1, groups=2)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.g(F.relu(self.a(x)))
        y = y.view(y.shape[0], 2, -1, *y.shape[2:]).softmax(dim=1).sum(dim=1)
        return self.head(y)


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.expand = nn.Conv2d(3, 12, 1)
        self.bn = nn.BatchNorm2d(12)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.project = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        return self.project(F.relu6(self.dw(F.relu6(self.bn(self.expand(x))))))


class FlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.conv(F.adaptive_avg_pool2d(x, 4))), 1))


class Attention(nn.Module):
    """Pre-norm transformer layer: attention heads plus an MLP, with free parameters."""

    def __init__(self, dim=24, heads=4, tokens=5, head_dim_from_stream=False):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.head_dim_from_stream = head_dim_from_stream
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens, dim))
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc1 = nn.Linear(dim, 32)
        self.fc2 = nn.Linear(32, dim)
        self.gamma = nn.Parameter(torch.rand(dim))
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
        b, n, c = t.shape
        head_dim = c // self.heads if self.head_dim_from_stream else self.head_dim
        q, k, v = self.qkv(self.norm(t)).reshape(b, n, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
        t = t + self.proj(a)
        t = t + self.gamma * self.fc2(F.gelu(self.fc1(t)))
        return self.head(t[:, 0])


def _groups_with(space, param):
    return [g for g in space["channels"].groups if param in g.producers]


def test_residual_add_ties_both_sides():
    space, _, _, ys, yg = round_trip(ResidualAdd(), torch.randn(2, 3, 8, 8))
    (g,) = _groups_with(space, "stem.weight")
    assert "b.weight" in g.producers and g.prunable
    assert [b.name for b in space["depth"].blocks] == ["#0"]
    assert rel_diff(ys, yg) < 1e-5


def test_concat_keeps_inputs_apart():
    space, d, sliced, ys, yg = round_trip(Concat(), torch.randn(2, 3, 8, 8))
    assert _groups_with(space, "a.weight")[0] is not _groups_with(space, "b.weight")[0]
    kept = len(d["channels"]["a"]) + len(d["channels"]["b"])
    assert sliced.head.in_channels == kept
    assert rel_diff(ys, yg) < 1e-5


def test_split_halves_lose_the_same_positions():
    space, d, sliced, ys, yg = round_trip(Split(), torch.randn(2, 3, 8, 8))
    (g,) = _groups_with(space, "a.weight")
    assert g.size == 6 and int(g.channels[0]) == 2  # unit i = channel i of each half
    assert sliced.left.in_channels == sliced.right.in_channels == len(d["channels"]["a"])
    assert rel_diff(ys, yg) < 1e-5


def test_split_with_sizes_refreshes_the_sizes_attribute():
    space, d, sliced, ys, yg = round_trip(MixedKernels(), torch.randn(2, 3, 8, 8))
    (g,) = _groups_with(space, "a.weight")
    assert g.prunable and g.pinned[[0, 4]].all()  # each part keeps a channel
    kept = np.asarray(d["channels"]["a"])
    assert sliced.splits == [int((kept < 4).sum()), int((kept >= 4).sum())]
    assert rel_diff(ys, yg) < 1e-5


def test_group_conv_prunes_whole_groups():
    space, d, sliced, ys, yg = round_trip(Grouped(), torch.randn(2, 3, 8, 8))
    (g,) = _groups_with(space, "g.weight")
    assert g.size == 4 and "a.weight" in g.producers
    assert sliced.g.groups == len(d["channels"][g.name])
    assert rel_diff(ys, yg) < 1e-5


def test_few_wide_groups_keep_the_same_positions_in_every_group():
    space, d, sliced, ys, yg = round_trip(FewWideGroups(), torch.randn(2, 3, 8, 8))
    (g,) = _groups_with(space, "a.weight")
    (h,) = _groups_with(space, "g.weight")
    assert g.size == 8 and h.size == 8 and g.prunable and h.prunable
    assert sliced.g.groups == 2 and sliced.g.in_channels == 2 * len(d["channels"][g.name])
    assert rel_diff(ys, yg) < 1e-5


def test_depthwise_follows_its_input():
    space, d, sliced, ys, yg = round_trip(Depthwise(), torch.randn(2, 3, 8, 8))
    (g,) = _groups_with(space, "expand.weight")
    assert "dw.weight" in g.producers and g.size == 12
    assert sliced.dw.groups == sliced.dw.out_channels == sliced.bn.num_features == len(d["channels"][g.name])
    assert rel_diff(ys, yg) < 1e-5


def test_flatten_linear_cuts_every_spatial_position_of_a_channel():
    space, d, sliced, ys, yg = round_trip(FlattenLinear(), torch.randn(2, 3, 8, 8))
    assert sliced.fc.in_features == 16 * len(d["channels"]["conv"])
    assert rel_diff(ys, yg) < 1e-5


def test_attention_layer():
    space, d, sliced, ys, yg = round_trip(Attention(), torch.randn(2, 3, 8, 8))
    # The residual stream feeds a LayerNorm: the gated model computes its statistics over the
    # kept channels, so its channels go one by one, like the sliced model's.
    stream = _groups_with(space, "embed.weight")[0]
    assert stream.prunable and stream.size == 24
    assert sliced.norm.normalized_shape == (len(d["channels"][stream.name]),) < (24,)
    # Free parameters (class token, positions, layer scale) join the stream's channels.
    assert {"cls", "pos", "gamma"} <= set(stream.producers)
    # The MLP hidden layer is free to shrink.
    (hidden,) = _groups_with(space, "fc1.weight")
    assert hidden.prunable and sliced.fc1.out_features == len(d["channels"]["fc1"])
    # q, k, v and proj channels of one head meet in attention: heads are the units.
    (qkv,) = _groups_with(space, "qkv.weight")
    assert qkv.prunable and qkv.size == 4 and int(qkv.channels[0]) == 3 * 6
    assert sliced.heads == len(d["channels"]["qkv"]) and sliced.proj.in_features == 6 * sliced.heads
    assert [b.name for b in space["depth"].blocks] == ["#0", "#1"]
    assert rel_diff(ys, yg) < 1e-5


def test_sizes_the_tracer_cannot_refresh_freeze_the_group():
    """Here the head size is computed from the stream width: removing heads would break the
    reshape, and validation catches it."""
    space = trace(Attention(head_dim_from_stream=True).eval(), torch.randn(1, 3, 8, 8))
    (qkv,) = _groups_with(space, "qkv.weight")
    assert not qkv.prunable and "does not reproduce" in qkv.frozen and "shape" in qkv.frozen
    assert _groups_with(space, "fc1.weight")[0].prunable


def test_untraceable_model_names_module_and_op():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x[:, :2])

    with pytest.raises(TraceError, match=r"module 'conv'.*input \(1, 3, 8, 8\)"):
        trace(Broken(), torch.randn(1, 3, 8, 8))


def test_one_module_on_both_halves_of_a_split_ties_the_halves():
    """A block applied to both halves of a chunk (a pattern from torch-pruning's tests): channel i
    of each half goes through row i of the same weights, so the halves are pruned alike."""

    class SharedOnHalves(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.shared = nn.Conv2d(8, 6, 3, padding=1)
            self.head = nn.Conv2d(12, 10, 1)

        def forward(self, x):
            a, b = torch.relu(self.stem(x)).chunk(2, dim=1)
            y = torch.cat([self.shared(a), self.shared(b)], dim=1)
            return self.head(torch.relu(y)).mean((2, 3))

    model = SharedOnHalves().eval()
    x = torch.randn(2, 3, 8, 8)
    space, decision, sliced, ys, yg = round_trip(model, x, ratio=0.5, seed=2)
    stem, shared = space["channels"].group("stem"), space["channels"].group("shared")
    assert stem.prunable and stem.size == 8 and int(stem.channels[0]) == 2  # channel i of each half
    assert shared.prunable and shared.size == 6
    kept = decision["channels"]["stem"]
    assert sliced.shared.in_channels == len(kept) and sliced.stem.out_channels == 2 * len(kept)
    assert rel_diff(ys, yg) < 1e-5
    from compressor.export.flops import fvcore_flops

    assert decision.flops(space) == pytest.approx(fvcore_flops(sliced, x[:1]), rel=1e-6)


def test_a_split_along_height_leaves_the_channels_prunable():
    """cat along H, a conv, split back along H with sizes read from the inputs (a pattern from
    torch-pruning's tests): the split cuts rows, not channels, so it ties and pins nothing."""

    class CatSplitOnHeight(nn.Module):
        def __init__(self, c=16):
            super().__init__()
            self.left = nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c), nn.GELU(), nn.Conv2d(c, c, 1))
            self.right = nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c), nn.GELU(), nn.Conv2d(c, c, 1))
            self.mix, self.out = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)

        def forward(self, x):
            a, b = self.left(x), self.right(x)
            h = self.mix(torch.cat([a, b], dim=2))
            top, _ = torch.split(h, [a.shape[2], b.shape[2]], dim=2)
            return self.out(top)

    model = CatSplitOnHeight().eval()
    x = torch.randn(2, 16, 5, 5)
    space, decision, sliced, ys, yg = round_trip(model, x, ratio=0.5, seed=0)
    mix = space["channels"].group("mix")
    assert mix.prunable and mix.size == 16 and not mix.pinned.any()
    assert space["channels"].group("left.3").prunable  # both branches' last convs: tied by the cat along H
    assert rel_diff(ys, yg) < 1e-5


def test_a_group_pinned_by_split_sizes_says_so():
    """Two channels split into parts of one: each part must keep its channel, so the group is
    frozen, and the reason is the split, not the model output."""

    class OnePerPart(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 2, 3, padding=1)
            self.a, self.b = nn.Conv2d(1, 4, 1), nn.Conv2d(1, 4, 1)

        def forward(self, x):
            p, q = torch.split(self.stem(x), [1, 1], dim=1)
            return (self.a(p) + self.b(q)).mean((2, 3))

    space = trace(OnePerPart().eval(), torch.randn(1, 3, 6, 6))
    stem = space["channels"].group("stem")
    assert not stem.prunable and "first of a split" in stem.frozen


class LazyIndices(nn.Module):
    """Builds a constant on its first call and keeps it as a buffer (as timm's ConViT does)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pos = nn.Linear(3, 8)
        self.register_buffer("rel", torch.zeros(1, 1, 3), persistent=False)

    def forward(self, x):
        n = x.shape[2] * x.shape[3]
        if self.rel.shape[1] != n:
            self.rel = torch.arange(3 * n, dtype=x.dtype).reshape(1, n, 3) / n
        h = self.conv(x).flatten(2).transpose(1, 2) + self.pos(self.rel)
        return h.mean(1)


def test_a_model_traces_the_same_before_and_after_its_first_call():
    """A saved model is rebuilt by tracing a fresh copy: the groups must not depend on whether
    the model had run before it was traced."""
    x = torch.randn(1, 3, 6, 6)
    fresh = build_space(LazyIndices(), x)
    used = LazyIndices()
    used(x)
    assert [g.name for g in build_space(used, x)["channels"].groups] == [g.name for g in fresh["channels"].groups]


class ReduceAfterConv(nn.Module):
    """conv -> ``reduce`` (one of the reductions below) -> a linear head over ``width`` features."""

    def __init__(self, reduce, width: int):
        super().__init__()
        self.reduce = reduce
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        return self.head(self.reduce(self.conv(x)))


def topk_along_tokens(y):
    """topk(k) over the last dim keeps each channel's row: ``args[1]`` of topk is k, not a dim."""
    return y.flatten(2).topk(4).values.mean(-1)  # (N, 8, 4) -> (N, 8): k=4 would read as dim 1


def norm_over_space(y):
    """torch.norm(x, p, dim) reduces ``dim`` (its third argument), not ``p``."""
    return torch.norm(y, 2, dim=(2, 3))


def topk_over_flat_scores(y):
    """A detector's proposal filter: topk(k, dim=1) over flattened scores, k above the rank."""
    return y.flatten(1).topk(20, dim=1).values


@pytest.mark.parametrize("reduce", [topk_along_tokens, norm_over_space])
def test_reductions_along_a_dim_keep_the_channels_of_the_others(reduce):
    x = torch.randn(2, 3, 8, 8)
    space, _, _, ys, yg = round_trip(ReduceAfterConv(reduce, 8), x)
    conv = space["channels"].group("conv")
    assert conv.prunable and conv.size == 8
    assert rel_diff(ys, yg) < 1e-5


def test_topk_over_channels_and_positions_ties_them_and_traces():
    space = trace(ReduceAfterConv(topk_over_flat_scores, 20).eval(), torch.randn(1, 3, 8, 8))
    assert space["channels"].group("conv").size == 1  # which values survive depends on every channel


class EmptySelection(nn.Module):
    """A detector's second stage on zero proposals: ops on a tensor with no elements."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        none = F.interpolate(y[:0], scale_factor=2.0, mode="bilinear")  # (0, 8, 16, 16)
        parts = none.flatten(2).split([0], dim=0)  # a split of the empty dim (per-image proposals)
        return self.head(y), parts[0].mean(2)


def test_ops_on_tensors_without_elements_trace():
    space = trace(EmptySelection().eval(), torch.randn(1, 3, 8, 8))
    assert space["channels"].group("conv").prunable
