"""What the trainer's loaders draw: samples with their index, and a seeded per-epoch order."""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .distributed import DistEnv


class IndexedDataset(Dataset):
    """``(x, y, i)``: a dataset's samples with their index (per-sample state such as voting
    teachers is keyed by it)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        x, y = self.dataset[i]
        return x, y, i


class EpochSampler(Sampler[int]):
    """A permutation drawn from ``(seed, epoch)``, sharded over the processes of a DDP run."""

    def __init__(self, n: int, seed: int, dist: DistEnv, shuffle: bool = True) -> None:
        self.n, self.seed, self.dist, self.shuffle, self.epoch = n, seed, dist, shuffle, 0
        self.per_rank = math.ceil(n / dist.world_size) if shuffle else len(range(dist.rank, n, dist.world_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.dist.rank, self.n, self.dist.world_size))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        order += order[: self.per_rank * self.dist.world_size - self.n]  # equal shards
        return iter(order[self.dist.rank::self.dist.world_size])

    def __len__(self) -> int:
        return self.per_rank


def cycle(loader: DataLoader):
    while True:
        yield from loader
