"""The training loop as two plain functions over (network, loader, optimizer, device), minGPT style.

``net`` is whatever maps a batch to logits: the full model, the suffix that runs on cached prefix tokens
(:class:`~ila_core.training.feature_cache.SuffixModel`), or either wrapped in DistributedDataParallel.
Both functions check ``should_stop`` between batches and report through ``on_step`` / ``on_batch``
callbacks; they never touch the store.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .metrics import EvalMetrics, MetricAccumulator
from .schedule import set_lr

__all__ = ["EpochStats", "train_one_epoch", "evaluate", "autocast", "build_optimizer"]


@dataclass(frozen=True)
class EpochStats:
    """What one pass over the training loader did."""

    epoch: int
    steps: int  # optimizer steps in this epoch
    samples: int
    loss: float  # mean training loss over the epoch's samples
    lr: float  # rate of the last step
    seconds: float
    global_step: int  # steps done since the start of the run
    stopped: bool  # True if should_stop ended the epoch early


def autocast(device: torch.device | str, enabled: bool) -> contextlib.AbstractContextManager:
    """fp16 autocast on CUDA when enabled; a no-op elsewhere (reduced precision on CPU is slower than fp32)."""
    device = torch.device(device)
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def build_optimizer(
    net: nn.Module, *, lr: float, momentum: float, nesterov: bool, weight_decay: float, adapter_lr_scale: float = 1.0
) -> torch.optim.SGD:
    """SGD over the trainable parameters only; weight decay only on matrices and kernels (nanoGPT's split).

    Args:
        adapter_lr_scale: rate multiplier for every trainable parameter outside the classifier head
            (stored as the group's ``lr_scale``, which :func:`~ila_core.training.schedule.set_lr` applies).
    """
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    model = net.module if hasattr(net, "module") else net  # DDP
    model = getattr(model, "model", model)  # SuffixModel
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    head_ids = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    groups = []
    for is_head in (True, False):
        scale = 1.0 if is_head else adapter_lr_scale
        chosen = [p for p in params if (id(p) in head_ids) == is_head]
        groups.append({"params": [p for p in chosen if p.dim() >= 2], "weight_decay": weight_decay, "lr_scale": scale})
        groups.append({"params": [p for p in chosen if p.dim() < 2], "weight_decay": 0.0, "lr_scale": scale})
    return torch.optim.SGD([g for g in groups if g["params"]], lr=lr, momentum=momentum, nesterov=nesterov)


def _to(batch: Any, device: torch.device) -> Any:
    return batch.to(device, non_blocking=True) if isinstance(batch, torch.Tensor) else batch


def train_one_epoch(
    net: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device | str,
    epoch: int,
    global_step: int,
    lr_schedule: Callable[[int], float],
    clip_grad: float | None = None,
    scaler: torch.amp.GradScaler | None = None,
    amp: bool = False,
    label_smoothing: float = 0.0,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    step_limit: Callable[[], int] | None = None,
) -> EpochStats:
    """One pass over ``loader`` with a per-iteration learning rate.

    ``step_limit`` returns the run's planned number of steps (it may shrink under a time budget): the pass ends
    early, without counting as stopped, once ``global_step`` reaches it.

    Raises:
        FloatingPointError: the loss became NaN or infinite (the run cannot recover from it).
    """
    device = torch.device(device)
    net.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    start, steps, samples, loss_sum, lr = time.perf_counter(), 0, 0, 0.0, float("nan")
    stopped = False
    for inputs, targets in loader:
        if step_limit is not None and global_step >= step_limit():
            break
        if should_stop is not None and should_stop():
            stopped = True
            break
        inputs, targets = _to(inputs, device), _to(targets, device)
        lr = lr_schedule(global_step)
        set_lr(optimizer, lr)
        with autocast(device, amp):
            logits = net(inputs)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"training loss is {loss_value} at epoch {epoch + 1}, step {global_step + 1}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if clip_grad is not None:
            nn.utils.clip_grad_norm_(params, clip_grad)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        n = int(targets.shape[0])
        steps, samples, global_step = steps + 1, samples + n, global_step + 1
        loss_sum += loss_value * n
        if on_step is not None:
            on_step({"epoch": epoch, "step": steps, "global_step": global_step, "loss": loss_value, "lr": lr})
    return EpochStats(
        epoch=epoch,
        steps=steps,
        samples=samples,
        loss=loss_sum / samples if samples else float("nan"),
        lr=lr,
        seconds=time.perf_counter() - start,
        global_step=global_step,
        stopped=stopped,
    )


@torch.no_grad()
def evaluate(
    net: nn.Module,
    loader: Iterable,
    *,
    device: torch.device | str,
    class_names: list[str],
    amp: bool = False,
    should_stop: Callable[[], bool] | None = None,
    on_batch: Callable[[int], None] | None = None,
    reduce: Callable[[MetricAccumulator], None] | None = None,
) -> EvalMetrics:
    """Top-1, top-5, macro-F1, per-class accuracy and confusion matrix over ``loader`` (eval mode).

    Args:
        reduce: called with the accumulator before computing (DDP: sum the counts of all ranks).
    """
    device = torch.device(device)
    was_training = net.training
    net.eval()
    acc = MetricAccumulator(len(class_names))
    try:
        for i, (inputs, targets) in enumerate(loader):
            if should_stop is not None and should_stop():
                break
            inputs, targets = _to(inputs, device), _to(targets, device)
            with autocast(device, amp):
                logits = net(inputs).float()
            acc.update(logits, targets, F.cross_entropy(logits, targets, reduction="sum"))
            if on_batch is not None:
                on_batch(i + 1)
    finally:
        net.train(was_training)
    if reduce is not None:
        reduce(acc)
    return acc.compute(class_names)
