"""CIFAR Wide ResNets (Zagoruyko & Komodakis 2016): pre-activation basic blocks, 3 stages of
16k/32k/64k channels with n = (depth - 4) / 6 blocks each; a 1x1 conv shortcut where the shape
changes.  MixtureGrowth's CIFAR target is WRN-28-10, grown from two WRN-28-5 seeds."""
from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        o = torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        return skip + self.conv2(torch.relu(self.bn2(self.conv1(o))))


class WideResNet(nn.Module):
    def __init__(self, depth: int = 28, widen: int = 10, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"Wide ResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        stages, cin = [], 16
        for i, cout in enumerate((16 * widen, 32 * widen, 64 * widen)):
            stages.append(nn.Sequential(*[PreActBlock(cin if j == 0 else cout, cout, 2 if i and not j else 1)
                                          for j in range(n)]))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.fc(torch.relu(self.bn(x)).mean((2, 3)))


@register_model
def cifar_wrn28_10(**kwargs) -> WideResNet:
    return WideResNet(28, 10, **kwargs)


@register_model
def cifar_wrn16_2(**kwargs) -> WideResNet:
    """A small member of the family, for tests and quick runs."""
    return WideResNet(16, 2, **kwargs)
