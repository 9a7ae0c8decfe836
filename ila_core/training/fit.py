"""One training run: inputs (cached or not), LP-FT head start, optimiser, step schedule, budget, evaluation.

Used by the job worker, the ``train`` command, ``reproduce`` and the distributed launcher. It never touches
the store: progress goes out through callbacks, stopping comes in through ``should_stop``. This module holds
the run itself; model preparation (:mod:`~ila_core.training.model_setup`), loaders and samplers
(:mod:`~ila_core.training.loaders`) and the DDP collectives (:mod:`~ila_core.training.collectives`) live
beside it, and their public names are importable from here too.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Sampler

from ..backbone import BuiltModel
from ..checkpoint import backbone_identity
from .budget import StepBudget
from .collectives import DistContext, _all_mean, _all_min, _all_reduce_counts, _dist_device
from .config import TrainConfig, resolve_device
from .dataset import ImageDataset, TrainingSet
from .feature_cache import (
    CachedDataset,
    CachedFeatures,
    FeatureCache,
    Residency,
    SuffixModel,
    plan_prefix,
    plan_residency,
)
from .head_init import init_head_closed_form
from .loaders import EpochShuffle, _loader, _Shard
from .loop import build_optimizer, evaluate, train_one_epoch
from .metrics import EvalMetrics
from .model_setup import prepare_model, seed_everything, share_frozen_weights, zero_adapter_outputs
from .schedule import CosineWarmup
from .transforms import Preprocess, eval_transform, preprocess_for, train_transform, train_views, view_transform

__all__ = ["FitResult", "DistContext", "EpochShuffle", "seed_everything", "prepare_model", "share_frozen_weights",
           "zero_adapter_outputs", "fit"]  # fmt: skip

_logger = logging.getLogger(__name__)

Callback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class FitResult:
    """Outcome of :func:`fit`."""

    metrics: EvalMetrics | None  # holdout metrics; None when stopped early or there is no holdout
    epochs: int  # passes over the training set begun (the last one may be partial)
    steps: int  # optimizer steps done
    stopped: bool
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per pass
    cache_stats: dict[str, int] = field(default_factory=dict)
    steps_requested: int = 0  # what the recipe asked for (steps, or epochs x steps per epoch)
    budget_cut: bool = False  # the time budget shortened training
    train_seconds: float = 0.0  # the part the budget counts
    head_init: dict[str, float] | None = None  # LP-FT closed-form head: alpha, out-of-fold top-1
    residency: Residency | None = None  # what the feature cache held and how long filling it took

    @property
    def cache_note(self) -> str | None:
        """Words for a run whose feature cache could not hold every training image; None when it could."""
        return self.residency.note if self.residency is not None else None

    def shortfall(self) -> str | None:
        """Words for a run that trained fewer steps than planned, e.g. for a job card; None when it did not."""
        if not self.budget_cut:
            return None
        return (f"trained {self.steps} of {self.steps_requested} planned steps before the time budget ran out "
                "(the machine may be busy); accuracy may suffer")  # fmt: skip


@dataclass
class _Inputs:
    """What the loop iterates over: datasets, the network that maps a batch to logits, fixed views for LP-FT."""

    train: Dataset
    holdout: Dataset
    net: nn.Module
    workers: int
    views: list[Dataset]  # the training samples under each fixed view (closed-form head fit)
    cached: bool
    residency: Residency | None = None  # what the feature cache holds, when training runs from it


def _inputs(
    built: BuiltModel, model: nn.Module, data: TrainingSet, config: TrainConfig, prep: Preprocess,
    cache: FeatureCache | None, stop: Callable[[], bool], progress: Callback,
) -> tuple[_Inputs, FeatureCache | None]:  # fmt: skip
    """Cached prefix tokens when the recipe asks and the prefix is frozen, else images through transforms."""
    plan = plan_prefix(model) if config.use_feature_cache else None
    views = train_views(config.hflip)  # the fixed views the LP-FT head is fitted on
    if plan is None:
        if config.use_feature_cache:
            _logger.info("feature cache requested but the patch embedding trains; running uncached")
        fixed: list[Dataset] = [ImageDataset(data.train, view_transform(prep, v)) for v in views]
        train = ImageDataset(data.train, train_transform(prep, hflip=config.hflip))
        return _Inputs(train, ImageDataset(data.holdout, eval_transform(prep)), model, config.num_workers, fixed,
                       False), None  # fmt: skip
    cache = cache or FeatureCache(max_memory_mb=1024)
    features = CachedFeatures(model, plan, prep, cache, backbone_identity(built))
    trained_views = train_views(config.hflip, config.crop_views)
    residency = _fill_resident(features, data, trained_views, config, stop, progress)
    fixed = [CachedDataset(data.train, features, train=False, view=v) for v in views]
    train = CachedDataset(data.train, features, train=config.hflip, seed=config.seed, views=trained_views)
    holdout = CachedDataset(data.holdout, features, train=False)
    inputs = _Inputs(train, holdout, SuffixModel(model, plan), 0, fixed, True, residency)
    return inputs, cache  # the cache lives in this process


def _fill_resident(features: CachedFeatures, data: TrainingSet, views: tuple[int, ...], config: TrainConfig,
                   stop: Callable[[], bool], progress: Callback) -> Residency | None:  # fmt: skip
    """Fill the cache with the images that fit its budget (a fixed subset, never evicted); say what it holds."""
    if not data.train:
        return None
    cache, began = features.cache, time.perf_counter()
    filled = 0 if features.held(data.train[:1], (0,)) else 1  # measuring an entry computes (and keeps) this one
    planned = plan_residency(cache.capacity_bytes(), features.entry_bytes(data.train[0]), len(data.train),
                             len(views), len(data.holdout))  # fmt: skip
    filled += features.fill(data.train[: planned.train], views, batch_size=config.eval_batch_size, should_stop=stop,
                           on_batch=lambda d, n: progress({"phase": "cache", "step": d, "total_steps": n}))  # fmt: skip
    filled += features.fill(data.holdout[: planned.holdout], (0,), batch_size=config.eval_batch_size,
                            should_stop=stop)  # fmt: skip
    # What the cache really holds: room taken by other runs' entries can leave part of the plan uncached.
    held = dataclasses.replace(planned, train=features.held(data.train[: planned.train], views),
                               holdout=features.held(data.holdout[: planned.holdout], (0,)), filled_views=filled,
                               fill_seconds=round(time.perf_counter() - began, 3))  # fmt: skip
    _logger.info("feature cache (%s): %d of %d training and %d of %d holdout images held; %d views computed in "
                 "%.1f s; %s", features.plan.describe(), held.train, held.train_total, held.holdout,
                 held.holdout_total, filled, held.fill_seconds, cache.stats())  # fmt: skip
    return held


def _distribute(net: nn.Module, train: Dataset, holdout: Dataset, dist: DistContext | None, device: torch.device,
                seed: int) -> tuple[nn.Module, Any, Sampler | None]:  # fmt: skip
    """Samplers (and DDP) for this process: (network, train sampler, holdout sampler)."""
    if dist is None:
        return net, EpochShuffle(len(train), seed), None
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(train, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed,
                                 drop_last=True)  # fmt: skip
    ddp = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    return ddp, sampler, _Shard(len(holdout), dist.rank, dist.world_size)


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
    on_start: Callable[[EvalMetrics], None] | None = None,
) -> FitResult:
    """Train ``built.model``'s adapters and head on ``data.train``, then evaluate once on ``data.holdout``.

    Args:
        built: from :func:`prepare_model`.
        data: the snapshot's samples and class names.
        config: the recipe.
        cache: feature cache to use when ``config.use_feature_cache`` (a private in-memory one otherwise).
        should_stop: polled between batches; True ends the run without evaluation.
        on_progress: gets ``{phase, epoch, step, total_steps, loss, lr, eta_s}`` as training goes.
        on_epoch: gets one row per pass over the training set (``epoch, loss, lr, seconds, steps``).
        dist: rank and world size under DistributedDataParallel (the process group must be initialised).
        on_start: with ``lp_init``, gets the holdout metrics of the starting network (closed-form head, adapters
            untrained) before the first step, while ``built.model`` is still in that state, so a job can keep
            it as a version of its own. Not called under DDP or without holdout images.
    """
    start = time.perf_counter()
    stop = should_stop or (lambda: False)
    progress = on_progress or (lambda _: None)
    device = torch.device(
        resolve_device(config.device) if dist is None or config.device != "auto" else _dist_device(dist)
    )
    model = built.model.to(device)
    prep = preprocess_for(model, config.image_size or built.backbone.image_size, config.resize_ratio)
    generator = seed_everything(config.seed + (dist.rank if dist else 0))
    inputs, cache = _inputs(built, model, data, config, prep, cache, stop, progress)
    use_amp = config.amp and device.type == "cuda"

    head_fit = _head_start(inputs, model, data, config, device, use_amp, dist, stop, progress, on_start)

    net, sampler, eval_sampler = _distribute(inputs.net, inputs.train, inputs.holdout, dist, device, config.seed)
    train_loader = _train_loader(inputs, config, sampler, dist, generator, device)
    budget = StepBudget(config.steps or config.epochs * len(train_loader), config.minutes,
                        every=10 if dist else 1, agree=lambda n: _all_min(n, dist))  # fmt: skip
    schedule = CosineWarmup(config.lr, budget.planned, config.warmup_steps, config.warmup_lr, config.min_lr)
    optimizer = build_optimizer(net, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                                weight_decay=config.weight_decay, adapter_lr_scale=config.adapter_lr_scale)  # fmt: skip
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    on_step = _step_reporter(budget, schedule, progress)

    history: list[dict[str, Any]] = []
    global_step, epoch, stopped = 0, 0, False
    budget.start()
    while global_step < budget.planned:
        for obj in (sampler, inputs.train):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
        stats = train_one_epoch(net, train_loader, optimizer, device=device, epoch=epoch, global_step=global_step,
                                lr_schedule=schedule, clip_grad=config.clip_grad, scaler=scaler, amp=use_amp,
                                label_smoothing=config.label_smoothing, should_stop=stop, on_step=on_step,
                                step_limit=lambda: budget.planned)  # fmt: skip
        global_step, epoch = stats.global_step, epoch + 1
        if stats.stopped or stats.steps == 0:
            stopped = stats.stopped
            break
        row = {"epoch": epoch, "loss": _all_mean(stats.loss, dist), "lr": stats.lr, "seconds": round(stats.seconds, 3),
               "steps": stats.steps, "global_step": global_step}  # fmt: skip
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
    if budget.cut:
        _logger.info("time budget %.1f min: %s", config.minutes, budget.describe())
    train_seconds = budget.elapsed_s
    if config.refit_head and not stopped and dist is None:  # the steps' features, a cross-validated head on them
        init_head_closed_form(inputs.net, model.get_classifier(), inputs.views, len(data.class_names),
                              device=device, seed=config.seed, should_stop=stop)  # fmt: skip

    metrics = None
    if not stopped and len(inputs.holdout) > 0:
        metrics = _evaluate(net, inputs.holdout, eval_sampler, data.class_names, config, device, dist, inputs.workers,
                            use_amp, stop, progress)  # fmt: skip
        if stop():
            stopped, metrics = True, None
    model.eval()
    head = None if head_fit is None else {"alpha": head_fit.alpha,
                                          "cv_top1": None if math.isnan(head_fit.cv_top1) else head_fit.cv_top1}
    return FitResult(metrics=metrics, epochs=len(history), steps=global_step, stopped=stopped,
                     seconds=time.perf_counter() - start, history=history,
                     cache_stats=cache.stats() if inputs.cached and cache is not None else {},
                     steps_requested=budget.requested, budget_cut=budget.cut, train_seconds=round(train_seconds, 2),
                     head_init=head, residency=inputs.residency)  # fmt: skip


def _head_start(inputs: _Inputs, model: nn.Module, data: TrainingSet, config: TrainConfig, device: torch.device,
                use_amp: bool, dist: DistContext | None, stop: Callable[[], bool], progress: Callback,
                on_start: Callable[[EvalMetrics], None] | None) -> Any:  # fmt: skip
    """LP-FT: the closed-form head on the starting network; its holdout metrics to ``on_start`` (not under DDP)."""
    if not config.lp_init or stop():
        return None
    progress({"phase": "head", "step": 0, "total_steps": 1})
    head_fit = init_head_closed_form(inputs.net, model.get_classifier(), inputs.views, len(data.class_names),
                                     device=device, seed=config.seed, should_stop=stop)  # fmt: skip
    if on_start is not None and head_fit is not None and dist is None and len(inputs.holdout) > 0:
        start_metrics = _evaluate(inputs.net, inputs.holdout, None, data.class_names, config, device, None,
                                  inputs.workers, use_amp, stop, progress)  # fmt: skip
        if not stop():
            on_start(start_metrics)
    return head_fit


def _train_loader(inputs: _Inputs, config: TrainConfig, sampler: Any, dist: DistContext | None,
                  generator: torch.Generator, device: torch.device) -> Any:  # fmt: skip
    """Batches of the training set for this process (tiny sets keep their partial batch)."""
    world = dist.world_size if dist else 1
    drop_last = len(inputs.train) // world >= config.batch_size
    loader = _loader(inputs.train, config.batch_size, sampler=sampler, drop_last=drop_last, workers=inputs.workers,
                     generator=generator, pin=device.type == "cuda")  # fmt: skip
    if len(loader) == 0:
        raise ValueError("no training images")
    return loader


def _step_reporter(budget: StepBudget, schedule: CosineWarmup, progress: Callback) -> Callback:
    """After each step: let the budget shrink the plan (and the cosine with it) and report progress with an ETA."""

    def on_step(row: dict[str, Any]) -> None:
        done = row["global_step"]
        if budget.step_done(done):  # the machine is slower than planned: fit the cosine to what still fits
            schedule.total_steps = budget.planned
        eta = budget.elapsed_s / max(done, 1) * max(budget.planned - done, 0)
        progress({"phase": "train", "epoch": row["epoch"] + 1, "step": done, "total_steps": budget.planned,
                  "loss": row["loss"], "lr": row["lr"], "eta_s": round(eta, 1)})  # fmt: skip

    return on_step


def _evaluate(net: nn.Module, holdout: Dataset, sampler: Sampler | None, class_names: list[str], config: TrainConfig,
              device: torch.device, dist: DistContext | None, workers: int, amp: bool, stop: Callable[[], bool],
              progress: Callback) -> EvalMetrics:  # fmt: skip
    loader = _loader(holdout, config.eval_batch_size, sampler=sampler, drop_last=False, workers=workers,
                     generator=None, pin=device.type == "cuda")  # fmt: skip
    n_batches = len(loader)
    return evaluate(net, loader, device=device, class_names=class_names, amp=amp, should_stop=stop,
                    reduce=_all_reduce_counts if dist is not None else None,
                    on_batch=lambda i: progress({"phase": "eval", "step": i, "total_steps": n_batches}))  # fmt: skip
