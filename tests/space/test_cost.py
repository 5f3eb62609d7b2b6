"""The cost model: exact against fvcore and parameter counts, and differentiable."""
import pytest
import torch

from compressor.decision import random_decision
from compressor.surgery import slice_model
from compressor.export.flops import fvcore_flops
from compressor.frontend import trace
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
    keep = torch.full((space["channels"].size,), 0.5, dtype=torch.double, requires_grad=True)
    blocks = torch.full((len(space["depth"].blocks),), 0.5, dtype=torch.double, requires_grad=True)
    flops = space.cost.flops({"channels": keep, "depth": blocks})
    flops.backward()
    g = space["channels"].groups[1]
    i = g.offset + 3
    step = keep.detach().clone()
    step[i] += 1.0
    flops = flops.detach()
    assert float(space.cost.flops({"channels": step, "depth": blocks.detach()}) - flops) \
        == pytest.approx(float(keep.grad[i]), rel=1e-9)
    bstep = blocks.detach().clone()
    bstep[0] += 1.0
    assert float(space.cost.flops({"channels": keep.detach(), "depth": bstep}) - flops) \
        == pytest.approx(float(blocks.grad[0]), rel=1e-9)
    assert float(blocks.grad[0]) > 0


def test_fraction_is_cost_over_full_cost():
    import torch
    from torch import nn

    from compressor.frontend import trace

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    space = trace(model, torch.randn(1, 3, 10, 10))
    keep = torch.rand(space["channels"].size, dtype=torch.double, requires_grad=True)
    for what, cost in (("flops", space.cost.flops), ("params", space.cost.params)):
        frac = space.cost.fraction(what, {"channels": keep})
        assert torch.allclose(frac, cost({"channels": keep}) / cost())
        assert float(space.cost.fraction(what)) == 1.0
    frac.backward()
    assert keep.grad is not None and keep.grad.abs().sum() > 0


class UpSampler(torch.nn.Module):
    """A stride-2 transposed conv (and a grouped one): each input pixel is multiplied into a k x k
    patch of the output, so MACs count input pixels, not output pixels."""

    def __init__(self):
        super().__init__()
        self.down = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.up = torch.nn.ConvTranspose2d(16, 12, 4, stride=2, padding=1)
        self.up_grouped = torch.nn.ConvTranspose2d(12, 8, 2, stride=2, groups=4)
        self.head = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.up_grouped(torch.relu(self.up(torch.relu(self.down(x))))))


@pytest.mark.parametrize("ratio", [0.5, 1.0])
def test_transposed_convolutions_cost_what_fvcore_counts(ratio):
    model = UpSampler().eval()
    x = torch.randn(1, 3, 16, 16)
    space = trace(model, x)
    assert space["channels"].group("up").prunable and space["channels"].group("down").prunable
    d = random_decision(space, ratio, seed=0)
    sliced = slice_model(model, space, d)
    assert d.flops(space) == pytest.approx(fvcore_flops(sliced, x), rel=1e-3)


def test_same_padding_convolutions_are_counted_by_the_reference():
    """``padding="same"`` traces to aten::_convolution_mode, which fvcore skips unless we add a
    handle (ConvMixer's depthwise convs): the reference must count it like any convolution."""
    same = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 5, padding="same", groups=8), torch.nn.Conv2d(8, 4, 1))
    explicit = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 5, padding=2, groups=8), torch.nn.Conv2d(8, 4, 1))
    x = torch.randn(1, 8, 12, 12)
    assert fvcore_flops(same, x) == fvcore_flops(explicit, x) == 8 * 25 * 144 + 8 * 4 * 144
    space = trace(same.eval(), x)
    assert float(space.cost.flops()) == fvcore_flops(same, x)


def test_weight_standardised_convolutions_are_costed():
    """A weight normalised in the forward (timm's StdConv2d / ScaledStdConv2d, NF nets, BiT) is not
    a parameter at the conv: the conv and the weight's batch-statistics still cost what fvcore
    counts (they were missing, so NF-net budgets meant nothing)."""
    from timm.layers import ScaledStdConv2d, StdConv2d

    model = torch.nn.Sequential(StdConv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                ScaledStdConv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 12, 12)
    space = trace(model, x)
    assert float(space.cost.flops()) == pytest.approx(fvcore_flops(model, x), rel=1e-9)


class _ContextBlock(torch.nn.Module):
    """``x + f(x, context)`` where ``f`` may or may not read the context."""

    def __init__(self, c: int, reads: bool) -> None:
        super().__init__()
        self.reads = reads
        self.conv = torch.nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x, context=None):
        y = self.conv(x)
        return x + (y * context if self.reads else y)


class _SharedContextStage(torch.nn.Module):
    """GC ViT's pattern: a context computed once per stage, read inside some blocks' branches."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, c, 3, padding=1)
        self.context = torch.nn.Conv2d(c, c, 3, padding=1)
        self.blocks = torch.nn.ModuleList([_ContextBlock(c, reads=i % 2 == 1) for i in range(4)])
        self.head = torch.nn.Conv2d(c, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        context = torch.sigmoid(self.context(x))
        for blk in self.blocks:
            x = blk(x, context)
        return self.head(x)


@pytest.mark.parametrize("removed", [[], ["blocks.1#0"], ["blocks.1#0", "blocks.3#0"],
                                     ["blocks.0#0", "blocks.1#0", "blocks.3#0"]])
def test_an_op_read_only_by_removed_blocks_costs_nothing(removed):
    """fvcore (like ONNX) drops an op whose result nothing reads any more: the stage's context once
    both blocks reading it are gone.  The cost model agrees for every choice of removed blocks."""
    from compressor.decision import Decision

    model = _SharedContextStage().eval()
    x = torch.randn(1, 3, 12, 12)
    space = trace(model, x)
    assert sorted(b.name for b in space["depth"].blocks) == [f"blocks.{i}#0" for i in range(4)]
    live = {frozenset(space["depth"].blocks[i].name for _, i in t.live)
            for t in space.cost.flops_terms if t.module == "context"}
    assert live == {frozenset({"blocks.1#0", "blocks.3#0"})}
    d = Decision({"depth": removed})
    sliced = slice_model(model, space, d)
    assert d.flops(space) == pytest.approx(fvcore_flops(sliced, x), rel=1e-9)
    # soft block values: the context is live with probability 1 - (1 - k1)(1 - k3), so keeping
    # block 1 adds its own conv and the context's share that block 3 does not already pay for
    conv = 8 * 8 * 9 * 144  # the context conv and each block's conv
    with_1, without_1 = (torch.tensor([0.5, k1, 0.5, 0.25], dtype=torch.double) for k1 in (1.0, 0.0))
    assert float(space.cost.flops({"depth": with_1}) - space.cost.flops({"depth": without_1})) \
        == pytest.approx(conv + conv * (1 - 0.25), rel=1e-12)
