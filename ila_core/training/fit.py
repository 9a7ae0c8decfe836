"""One training run: model preparation, data loaders, optimiser, schedule, epochs, budget, final evaluation.

Used by the job worker, the ``train`` command, ``reproduce`` and the distributed launcher. It never touches
the store: progress goes out through callbacks, stopping comes in through ``should_stop``. This module holds
the run itself; model preparation (:mod:`~ila_core.training.model_setup`), loaders and samplers
(:mod:`~ila_core.training.loaders`) and the DDP collectives (:mod:`~ila_core.training.collectives`) live
beside it, and their public names are importable from here too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Sampler

from ..backbone import BuiltModel
from ..checkpoint import backbone_fingerprint
from .collectives import DistContext, _all_mean, _all_min, _all_reduce_counts, _dist_device
from .config import TrainConfig, resolve_device
from .dataset import ImageDataset, TrainingSet
from .feature_cache import CachedDataset, CachedFeatures, FeatureCache, SuffixModel, plan_prefix
from .loaders import EpochShuffle, _loader, _Shard
from .loop import build_optimizer, evaluate, train_one_epoch
from .metrics import EvalMetrics
from .model_setup import prepare_model, seed_everything, share_frozen_weights, zero_adapter_outputs
from .schedule import CosineWarmup
from .transforms import eval_transform, preprocess_for, train_transform

__all__ = ["FitResult", "DistContext", "EpochShuffle", "seed_everything", "prepare_model", "share_frozen_weights",
           "zero_adapter_outputs", "fit"]  # fmt: skip

_logger = logging.getLogger(__name__)

Callback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class FitResult:
    """Outcome of :func:`fit`."""

    metrics: EvalMetrics | None  # holdout metrics; None when stopped early or there is no holdout
    epochs: int  # epochs completed
    steps: int
    stopped: bool
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    cache_stats: dict[str, int] = field(default_factory=dict)


def fit(
    built: BuiltModel,
    data: TrainingSet,
    config: TrainConfig,
    *,
    cache: FeatureCache | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callback | None = None,
    on_epoch: Callback | None = None,
    dist: DistContext | None = None,
) -> FitResult:
    """Train ``built.model``'s adapters and head on ``data.train``, then evaluate once on ``data.holdout``.

    Args:
        built: from :func:`prepare_model`.
        data: the snapshot's samples and class names.
        config: the recipe.
        cache: feature cache to use when ``config.use_feature_cache`` (a private in-memory one otherwise).
        should_stop: polled between batches; True ends the run without evaluation.
        on_progress: gets ``{phase, epoch, step, total_steps, loss, lr, eta_s}`` as training goes.
        on_epoch: gets one row per finished epoch (``epoch, loss, lr, seconds, steps``).
        dist: rank and world size under DistributedDataParallel (the process group must be initialised).
    """
    start = time.perf_counter()
    stop = should_stop or (lambda: False)
    progress = on_progress or (lambda _: None)
    device = torch.device(
        resolve_device(config.device) if dist is None or config.device != "auto" else _dist_device(dist)
    )
    model = built.model.to(device)
    image_size = config.image_size or built.backbone.image_size
    prep = preprocess_for(model, image_size, config.resize_ratio)
    generator = seed_everything(config.seed + (dist.rank if dist else 0))

    plan = plan_prefix(model) if config.use_feature_cache else None
    if plan is not None:
        cache = cache or FeatureCache(max_memory_mb=1024)
        ident = built.weights_sha256 or backbone_fingerprint(model)
        features = CachedFeatures(model, plan, prep, cache, ident)
        todo = list(data.train) + list(data.holdout)
        features.fill(data.train, (0, 1) if config.hflip else (0,), batch_size=config.eval_batch_size, should_stop=stop,
                      on_batch=lambda d, n: progress({"phase": "cache", "step": d, "total_steps": n}))  # fmt: skip
        features.fill(data.holdout, (0,), batch_size=config.eval_batch_size, should_stop=stop)
        _logger.info("feature cache (%s) ready for %d images: %s", plan.describe(), len(todo), cache.stats())
        train_ds: Dataset = CachedDataset(data.train, features, train=config.hflip, seed=config.seed)
        eval_ds: Dataset = CachedDataset(data.holdout, features, train=False)
        net: nn.Module = SuffixModel(model, plan)
        workers = 0  # the cache lives in this process
    else:
        if config.use_feature_cache:
            _logger.info("feature cache requested but the patch embedding trains; running uncached")
        train_ds = ImageDataset(data.train, train_transform(prep, hflip=config.hflip))
        eval_ds = ImageDataset(data.holdout, eval_transform(prep))
        net, workers = model, config.num_workers

    world = dist.world_size if dist else 1
    if dist is not None:
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data.distributed import DistributedSampler

        sampler: Any = DistributedSampler(train_ds, num_replicas=world, rank=dist.rank, shuffle=True, seed=config.seed,
                                          drop_last=True)  # fmt: skip
        eval_sampler: Sampler | None = _Shard(len(eval_ds), dist.rank, world)
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        sampler, eval_sampler = EpochShuffle(len(train_ds), config.seed), None
    local = len(train_ds) // world
    drop_last = local >= config.batch_size  # tiny sets: keep the partial batch rather than train on nothing
    pin = device.type == "cuda"
    train_loader = _loader(train_ds, config.batch_size, sampler=sampler, drop_last=drop_last, workers=workers,
                           generator=generator, pin=pin)  # fmt: skip
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError("no training images")
    schedule = CosineWarmup(config.lr, config.epochs * steps_per_epoch, config.warmup_steps, config.warmup_lr,
                            config.min_lr)  # fmt: skip
    optimizer = build_optimizer(net, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                                weight_decay=config.weight_decay, adapter_lr_scale=config.adapter_lr_scale)  # fmt: skip
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None

    history: list[dict[str, Any]] = []
    epochs_planned, global_step, stopped = config.epochs, 0, False
    budget_s = config.minutes * 60 if config.minutes else None
    train_start = time.perf_counter()

    def on_step(row: dict[str, Any]) -> None:
        done = row["global_step"]
        total = epochs_planned * steps_per_epoch
        per_step = (time.perf_counter() - train_start) / max(done, 1)
        progress({"phase": "train", "epoch": row["epoch"] + 1, "step": done, "total_steps": total, "loss": row["loss"],
                  "lr": row["lr"], "eta_s": round(per_step * max(total - done, 0), 1)})  # fmt: skip

    epoch = 0
    for epoch in range(config.epochs):
        if epoch >= epochs_planned:
            break
        for obj in (sampler, train_ds):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
        stats = train_one_epoch(net, train_loader, optimizer, device=device, epoch=epoch, global_step=global_step,
                                lr_schedule=schedule, clip_grad=config.clip_grad, scaler=scaler, amp=use_amp,
                                label_smoothing=config.label_smoothing, should_stop=stop, on_step=on_step)  # fmt: skip
        global_step = stats.global_step
        if stats.stopped:
            stopped = True
            break
        row = {"epoch": epoch + 1, "loss": _all_mean(stats.loss, dist), "lr": stats.lr,
               "seconds": round(stats.seconds, 3), "steps": stats.steps, "global_step": global_step}  # fmt: skip
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if budget_s is not None:
            # Re-plan after every epoch from the last epoch's time (the machine may have got busier), and fit
            # the cosine to the epochs that still fit, so the rate anneals before time runs out. Never grows.
            left = budget_s - (time.perf_counter() - start)
            fits = epoch + 1 + int(left // max(stats.seconds, 1e-6))
            planned = _all_min(max(epoch + 1, min(epochs_planned, fits)), dist)
            if planned < epochs_planned:
                epochs_planned = planned
                schedule.total_steps = epochs_planned * steps_per_epoch
                _logger.info("time budget %.1f min: training %d of %d epochs", config.minutes, epochs_planned,
                             config.epochs)  # fmt: skip
    epochs_done = len(history)

    metrics = None
    if not stopped and len(eval_ds) > 0:
        eval_loader = _loader(eval_ds, config.eval_batch_size, sampler=eval_sampler, drop_last=False, workers=workers,
                              generator=None, pin=pin)  # fmt: skip
        reduce = _all_reduce_counts if dist is not None else None
        n_batches = len(eval_loader)

        def on_eval_batch(i: int) -> None:
            progress({"phase": "eval", "step": i, "total_steps": n_batches})

        metrics = evaluate(net, eval_loader, device=device, class_names=data.class_names, amp=use_amp,
                           should_stop=stop, reduce=reduce, on_batch=on_eval_batch)  # fmt: skip
        if stop():
            stopped, metrics = True, None
    model.eval()
    return FitResult(metrics=metrics, epochs=epochs_done, steps=global_step, stopped=stopped,
                     seconds=time.perf_counter() - start, history=history,
                     cache_stats=cache.stats() if plan is not None and cache is not None else {})  # fmt: skip
