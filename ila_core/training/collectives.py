"""A process's place in a DistributedDataParallel run and the collectives training needs (device, all-reduce).

The process group itself is set up by :mod:`ila_core.jobs.distributed`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["DistContext"]


@dataclass(frozen=True)
class DistContext:
    """This process's place in a DistributedDataParallel run (see :mod:`ila_core.jobs.distributed`)."""

    rank: int
    world_size: int


def _dist_device(dist: DistContext) -> str:
    if torch.cuda.is_available():  # torchrun's LOCAL_RANK: global ranks do not map to GPUs across machines
        return f"cuda:{int(os.environ.get('LOCAL_RANK', dist.rank)) % torch.cuda.device_count()}"
    return "cpu"


def _comm(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as tdist

    # nccl only reduces CUDA tensors; gloo takes CPU ones
    return t.to(f"cuda:{torch.cuda.current_device()}") if tdist.get_backend() == "nccl" else t


def _all_reduce_counts(acc: Any) -> None:
    import torch.distributed as tdist

    flat = _comm(acc.state())
    tdist.all_reduce(flat)
    acc.load_state(flat)


def _all_mean(value: float, dist: DistContext | None) -> float:
    if dist is None or math.isnan(value):
        return value
    import torch.distributed as tdist

    t = _comm(torch.tensor([value], dtype=torch.float64))
    tdist.all_reduce(t)
    return float(t) / dist.world_size


def _all_min(value: int, dist: DistContext | None) -> int:
    if dist is None:
        return value
    import torch.distributed as tdist

    t = _comm(torch.tensor([value], dtype=torch.int64))
    tdist.all_reduce(t, op=tdist.ReduceOp.MIN)
    return int(t)
