"""Multi-process training with torchrun + DistributedDataParallel (gloo on CPU, nccl on GPU).

``python -m torch.distributed.run --nproc_per_node N -m ila_core train --data-dir DIR`` runs the ``train``
command in N processes. :func:`init_from_env` joins the process group that torchrun describes in the
environment; :func:`run_job_distributed` lets rank 0 queue and claim the job and broadcast its id, every rank
trains on the same snapshot with a :class:`~torch.utils.data.distributed.DistributedSampler`, gradients are
averaged by DDP, evaluation counts are all-reduced, and only rank 0 writes progress, the checkpoint and the
store. With the same global batch (N x per-rank batch), the run matches a single-process run step for step
as long as nothing in the model depends on the per-rank batch: BatchNorm statistics do (each rank normalises
over its own samples), so the equivalence test uses the ``norm="ln"`` ILA variant.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist

from ..store import LabelStore
from ..training.collectives import DistContext
from .params import job_params
from .runner import RunOutcome, run_training
from .worker import Worker

__all__ = [
    "DistContext",
    "broadcast_object",
    "choose_backend",
    "cleanup",
    "init_from_env",
    "launched_by_torchrun",
    "run_job_distributed",
]

_logger = logging.getLogger(__name__)


def launched_by_torchrun() -> bool:
    """True when the environment describes a multi-process group (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def choose_backend(local_world_size: int) -> str:
    """nccl when every process on this machine gets a GPU of its own, else gloo.

    NCCL refuses two ranks on one device, so more local ranks than GPUs (or ``ILA_DIST_BACKEND=gloo``) falls
    back to gloo, which also reduces CUDA tensors, only slower.
    """
    forced = os.environ.get("ILA_DIST_BACKEND")
    if forced:
        if forced not in ("nccl", "gloo"):
            raise ValueError(f"ILA_DIST_BACKEND must be nccl or gloo, got {forced!r}")
        return forced
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and local_world_size > gpus:
        _logger.warning("%d local ranks, %d GPU(s): using gloo (nccl needs one GPU per rank)", local_world_size, gpus)
    return "nccl" if gpus and local_world_size <= gpus else "gloo"


def init_from_env(timeout_s: float = 1800) -> DistContext | None:
    """Join torchrun's process group (backend: :func:`choose_backend`); None for a single process."""
    if not launched_by_torchrun():
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    backend = choose_backend(int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    if backend == "nccl":
        torch.cuda.set_device(local)
    if not tdist.is_initialized():
        tdist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    _logger.info("rank %d of %d joined (%s)", rank, world, backend)
    return DistContext(rank=rank, world_size=world)


def broadcast_object(obj: Any, dist: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank."""
    box = [obj if dist.rank == 0 else None]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup() -> None:
    """Leave the process group (safe to call when none exists)."""
    if tdist.is_initialized():
        tdist.destroy_process_group()


def run_job_distributed(data_dir: Path, dist: DistContext, *, store_path: Path | None = None,
                        user: str | None = None, **params: Any) -> RunOutcome:  # fmt: skip
    """Queue (rank 0), claim (rank 0) and train one job on every rank; returns each rank's outcome.

    Args:
        data_dir: the shared data directory (every rank reads the same store and images).
        dist: from :func:`init_from_env`.
        store_path: defaults to ``<data_dir>/ila.db``.
        user: recorded on the job.
        **params: :func:`~ila_core.jobs.worker.job_params` arguments.

    Raises:
        JobBusy: (every rank) another job is queued or running.
    """
    worker = Worker(data_dir, store_path=store_path)
    error, job_id = None, None
    if dist.rank == 0:
        try:
            with LabelStore.open(worker.store_path) as store:
                store.enqueue_job("train", job_params(**params), user=user)
            job = worker.claim()
            job_id = None if job is None else int(job["id"])
        except Exception as exc:  # tell the other ranks instead of leaving them waiting
            error = exc
    error, job_id = broadcast_object((error, job_id), dist)
    if error is not None:
        raise error
    if job_id is None:
        raise RuntimeError("the queued job was claimed by another worker")
    return run_training(job_id, worker.store_path, worker.data_dir, threading.Event(), dist=dist)
