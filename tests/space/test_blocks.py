"""Residual blocks and their stages."""
import torch
from torch import nn

from compressor.frontend import trace


class Res(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.ReLU(), nn.Conv2d(2 * c, c, 1))

    def forward(self, x):
        return x + self.body(x)


def flat_net() -> nn.Module:
    """Like mobilenet_v2's ``features``: every block under one parent, the stream widening twice."""
    return nn.Sequential(nn.Conv2d(3, 8, 3), Res(8), Res(8), nn.Conv2d(8, 16, 3, stride=2), Res(16),
                         nn.Conv2d(16, 24, 1), Res(24), Res(24), Res(24), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(24, 5))


def test_a_stage_is_a_run_of_blocks_on_one_stream_not_one_parent():
    space = trace(flat_net(), torch.randn(1, 3, 16, 16))
    stages = [b.stage for b in space["depth"].blocks]
    assert [b.owner for b in space["depth"].blocks] == ["1", "2", "4", "6", "7", "8"]
    assert stages == ["1-2", "1-2", "4", "6-8", "6-8", "6-8"]


def test_blocks_under_their_own_parent_take_its_name():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Sequential(Res(8), Res(8)), nn.Conv2d(8, 16, 1),
                        nn.Sequential(Res(16)), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))
    space = trace(net, torch.randn(1, 3, 16, 16))
    assert [b.stage for b in space["depth"].blocks] == ["1", "1", "3"]


class Masked(nn.Module):
    def forward(self, h, mask=None):
        return h if mask is None else h * mask


class MaskedMix(nn.Module):
    """Like a timm ViT block: the first branch also reads an optional forward argument."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.mix, self.masked, self.mlp = nn.Conv2d(c, c, 1), Masked(), Res(c).body

    def forward(self, x, mask=None):
        x = x + self.masked(self.mix(x), mask)
        return x + self.mlp(x)


class ReadsTwoInputs(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)

    def forward(self, x, y):
        return x + self.a(x) * self.b(y)


def test_a_branch_may_read_optional_arguments_but_not_another_required_input():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), MaskedMix(8), MaskedMix(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 2))
    space = trace(net, torch.randn(1, 3, 16, 16))
    assert [b.name for b in space["depth"].blocks] == ["1#0", "1#1", "2#0", "2#1"]

    from compressor.space.blocks import find_blocks

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = ReadsTwoInputs(4)

        def forward(self, x):
            return self.inner(x, x.flip(1))

    blocks, skipped, _ = find_blocks(Outer(), ["inner"])
    assert blocks == [] and skipped == {}


class InplaceGainRes(nn.Module):
    """NF-net style: the branch output scaled in place by a parameter before the add."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.ReLU(), nn.Conv2d(2 * c, c, 1))
        self.gain = nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        out = self.body(x)
        out.mul_(self.gain)
        return x + out * 0.2


def test_a_parameter_applied_in_place_to_the_branch_goes_with_the_block():
    """``out.mul_(gain)`` is no ancestor of the branch output in the graph; removing the block
    still removes ``gain``, and the parameter count says so."""
    from compressor.decision import Decision
    from compressor.surgery import slice_model

    model = nn.Sequential(nn.Conv2d(3, 8, 3), InplaceGainRes(8), InplaceGainRes(8), nn.Flatten(), nn.LazyLinear(5))
    x = torch.randn(1, 3, 8, 8)
    model(x)
    space = trace(model.eval(), x)
    assert [b.params for b in space["depth"].blocks] == [["1.gain"], ["2.gain"]]
    decision = Decision({"depth": [space["depth"].blocks[0].name]})
    sliced = slice_model(model, space, decision)
    assert int(round(decision.params(space))) == sum(p.numel() for p in sliced.parameters())


class SharedMlpBranches(nn.Module):
    """Three residual streams whose branches call one MLP module (timm CoaT's parallel blocks:
    ``mlp2 = mlp3 = mlp4``)."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.mlp2 = self.mlp3 = nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.ReLU(), nn.Conv2d(2 * c, c, 1))
        self.own = nn.Conv2d(c, c, 1)
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        h = self.stem(x)
        a, b = h + self.mlp2(h), h[:, :, ::2, ::2] + self.mlp3(h[:, :, ::2, ::2])
        b = b + self.own(b)
        return self.head(a.mean((2, 3)) + b.mean((2, 3)))


def test_a_branch_calling_a_module_shared_with_other_code_is_not_a_block():
    """Removing one call of a shared module cannot be priced by module name: such a branch is no
    block (with the reason), the others stay, and the cost model matches fvcore after slicing."""
    from compressor.decision import Decision
    from compressor.export.flops import fvcore_flops
    from compressor.surgery import slice_model

    model, x = SharedMlpBranches().eval(), torch.randn(1, 3, 8, 8)
    space = trace(model, x)
    assert [b.modules for b in space["depth"].blocks] == [["own"]]
    assert any("mlp2" in why for why in space["depth"].dropped.values())
    decision = Decision({"depth": [space["depth"].blocks[0].name]})
    sliced = slice_model(model, space, decision)
    assert decision.flops(space) == fvcore_flops(sliced, x)
