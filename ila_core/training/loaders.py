"""Data loaders and samplers of a training run: seeded epoch shuffles, evaluation shards, seeded workers."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["EpochShuffle"]


class EpochShuffle(Sampler[int]):
    """A permutation seeded by ``seed + epoch`` (the order DistributedSampler gives a single process)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class _Shard(Sampler[int]):
    """Every ``world``-th index from ``rank``, no padding (evaluation counts each sample exactly once)."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _seed_worker(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def _loader(ds: Dataset, batch_size: int, *, sampler: Sampler | None, drop_last: bool, workers: int,
            generator: torch.Generator | None, pin: bool) -> DataLoader:  # fmt: skip
    return DataLoader(
        ds, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=workers, generator=generator,
        worker_init_fn=_seed_worker if workers else None, pin_memory=pin, persistent_workers=False,
    )  # fmt: skip
