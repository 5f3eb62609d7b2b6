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
    stages = [b.stage for b in space.blocks]
    assert [b.owner for b in space.blocks] == ["1", "2", "4", "6", "7", "8"]
    assert stages == ["1-2", "1-2", "4", "6-8", "6-8", "6-8"]


def test_blocks_under_their_own_parent_take_its_name():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Sequential(Res(8), Res(8)), nn.Conv2d(8, 16, 1),
                        nn.Sequential(Res(16)), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))
    space = trace(net, torch.randn(1, 3, 16, 16))
    assert [b.stage for b in space.blocks] == ["1", "1", "3"]


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
    assert [b.name for b in space.blocks] == ["1#0", "1#1", "2#0", "2#1"]

    from compressor.space.blocks import find_blocks

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = ReadsTwoInputs(4)

        def forward(self, x):
            return self.inner(x, x.flip(1))

    blocks, skipped = find_blocks(Outer(), ["inner"])
    assert blocks == [] and skipped == {}
