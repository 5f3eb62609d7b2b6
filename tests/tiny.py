"""A small user-built network (not from any zoo) used by the end-to-end tests."""
from __future__ import annotations

import torch
from torch import nn

TINY_RECIPE = {
    "data": {"input_size": 16, "batch_size": 32, "limit_train": 256, "val_fraction": 0.1},
    "base": {"epochs": 1, "lr": 0.05},
    "search": {"epochs": 3, "lr": 0.05},
    "finetune": {"epochs": 1, "lr": 0.01},
    "export": {"round_to": 1, "latency_repeats": 3},
    "run": {"progress": False, "seed": 0},
}


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class TinyNet(nn.Module):
    """stem -> 2 residual blocks -> strided conv -> 1 residual block -> pool -> linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.stage1 = nn.Sequential(Block(16), Block(16))
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.stage2 = nn.Sequential(Block(32))
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(x.mean((2, 3)))
