"""Run one claimed training job end to end, reporting through the store.

``run_training`` trains on the job's label snapshot (CON-09), writes progress, heartbeats and per-epoch
metrics to the store through its own connection, honours cancellation between batches, evaluates on the
holdout split, publishes a checkpoint atomically, records a model version and auto-promotes it when holdout
top-1 does not get worse. Every failure ends the job as ``failed`` with the error message (FLT-18); a job
finished elsewhere meanwhile (watchdog, restart sweep) publishes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import BackboneConfig
from ..store import LabelStore, StoreError
from ..serving.versions import promote, publish_version, should_promote
from ..training.dataset import snapshot
from ..training.feature_cache import FeatureCache
from ..training.fit import DistContext, fit, prepare_model, share_frozen_weights
from .params import parse_job_params

__all__ = ["RunOutcome", "EventCallback", "run_training"]

_logger = logging.getLogger(__name__)

EventCallback = Callable[[dict[str, Any]], None]
_MAX_CONFUSION_CLASSES = 100  # larger confusion matrices stay out of JSON rows


@dataclass(frozen=True)
class RunOutcome:
    """How a job ended."""

    job_id: int
    status: str  # succeeded, failed, cancelled, lost
    message: str | None = None
    version_id: int | None = None
    promoted: bool = False
    metrics: dict[str, Any] | None = None
    epochs: int = 0


class _Reporter:
    """Throttled progress, heartbeats, cancellation checks and metric rows for one job."""

    def __init__(self, store: LabelStore, job_id: int, stop: threading.Event, interval_s: float,
                 emit: EventCallback, *, writes: bool = True, poll_cancel: bool = True) -> None:  # fmt: skip
        self.store, self.job_id, self.stop, self.interval, self.emit = store, job_id, stop, interval_s, emit
        self.writes, self.poll_cancel = writes, poll_cancel  # DDP: only rank 0 writes; no rank stops alone
        self.lost = self.cancelled = False
        self._last_check = self._last_progress = 0.0
        self._phase = None

    def beat(self) -> None:
        if not self.writes:
            return
        try:
            if not self.store.heartbeat(self.job_id):
                self.lost = True  # the job was finished by someone else (watchdog, restart sweep)
        except StoreError as exc:
            _logger.warning("heartbeat for job %d failed: %s", self.job_id, exc)

    def should_stop(self) -> bool:
        if not self.poll_cancel:
            self._maybe_beat()
            return False  # under DDP a rank that stopped alone would hang the others in all-reduce
        if self.stop.is_set() or self.lost or self.cancelled:
            return True
        now = time.monotonic()
        if now - self._last_check >= self.interval:
            self._last_check = now
            try:
                self.cancelled = self.store.cancel_requested(self.job_id)
            except StoreError as exc:
                _logger.warning("cancel check for job %d failed: %s", self.job_id, exc)
            self.beat()
        return self.stop.is_set() or self.lost or self.cancelled

    def _maybe_beat(self) -> None:
        now = time.monotonic()
        if now - self._last_check >= self.interval:
            self._last_check = now
            self.beat()

    def progress(self, row: dict[str, Any]) -> None:
        self.emit({"kind": "progress", "job_id": self.job_id, **row})
        if not self.writes:
            return
        now = time.monotonic()
        if now - self._last_progress < self.interval and row.get("phase") == self._phase:
            return
        self._last_progress, self._phase = now, row.get("phase")
        try:
            if not self.store.update_progress(self.job_id, **row):
                self.lost = True
        except StoreError as exc:
            _logger.warning("progress for job %d not saved: %s", self.job_id, exc)

    def epoch(self, row: dict[str, Any]) -> None:
        self.emit({"kind": "epoch", "job_id": self.job_id, **row})
        if not self.writes:
            return
        try:
            self.store.log_job_metrics(self.job_id, step=row["global_step"], epoch=row["epoch"], values=row)
        except StoreError as exc:
            _logger.warning("metrics row for job %d not saved: %s", self.job_id, exc)


def _failure_message(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 2000 else text[:1997] + "..."


def run_training(
    job: Mapping[str, Any] | int,
    store_path: Path,
    data_dir: Path,
    stop: threading.Event,
    on_event: EventCallback | None = None,
    *,
    cache: FeatureCache | None = None,
    share_from: Callable[[BackboneConfig], Any] | None = None,
    progress_interval_s: float = 1.0,
    dist: DistContext | None = None,
) -> RunOutcome:
    """Run one job that this worker has claimed (status 'running'); the job row always ends final.

    Args:
        job: the claimed job row or its id.
        store_path: the SQLite store; this function opens its own connection.
        data_dir: images, adapters, cache and default weights live here.
        stop: set it to stop between batches (the job ends 'cancelled').
        on_event: gets ``{"kind": "progress" | "epoch" | "finished", "job_id", ...}`` dicts (UI callbacks).
        cache: a feature cache kept across jobs (a fresh one under ``<data_dir>/cache/features`` otherwise).
        share_from: returns a model whose frozen tensors the new model may share, for a given backbone.
        progress_interval_s: minimum time between progress writes / cancel checks.
        dist: under torchrun, this process's rank; every rank calls this, only rank 0 writes (no cancel).
    """
    job_id = int(job["id"] if isinstance(job, Mapping) else job)
    emit = on_event or (lambda _: None)
    data_dir = Path(data_dir)
    with LabelStore.open(store_path, quick_check=False) as store:
        row = store.job(job_id)
        if row["status"] != "running":
            return RunOutcome(job_id, "lost", f"job is {row['status']}, not running")
        leader = dist is None or dist.rank == 0
        rep = _Reporter(store, job_id, stop, progress_interval_s, emit, writes=leader, poll_cancel=dist is None)
        try:
            outcome = _train_job(store, row, data_dir, rep, cache, share_from, dist)
        except Exception as exc:  # every failure becomes the job's message; the app keeps running
            _logger.exception("training job %d failed", job_id)
            outcome = RunOutcome(job_id, "failed", _failure_message(exc))
        if not leader:
            return outcome
        if outcome.status == "lost":
            _logger.warning("job %d was finished elsewhere (watchdog or restart); nothing published", job_id)
        elif not store.finish_job(job_id, outcome.status, message=outcome.message, result_version_id=outcome.version_id):
            outcome = RunOutcome(job_id, "lost", "job was already finished elsewhere", outcome.version_id)
        emit({"kind": "finished", "job_id": job_id, "status": outcome.status, "message": outcome.message,
              "version_id": outcome.version_id, "promoted": outcome.promoted})  # fmt: skip
        return outcome


def _metrics_json(metrics: Any) -> dict[str, Any]:
    if metrics is None:
        return {}
    out = metrics.to_dict()
    if len(out["per_class_accuracy"]) > _MAX_CONFUSION_CLASSES:
        out.pop("confusion")
    return out


def _train_job(store: LabelStore, row: dict[str, Any], data_dir: Path, rep: _Reporter, cache: FeatureCache | None,
               share_from: Callable[[BackboneConfig], Any] | None, dist: DistContext | None = None) -> RunOutcome:  # fmt: skip
    job_id = int(row["id"])
    backbone, method, config = parse_job_params(row["params"])
    snap = int(row["snapshot_event_id"])
    data = snapshot(store, data_dir, max_event_id=snap)
    rep.progress({"phase": "prepare", "train_images": len(data.train), "holdout_images": len(data.holdout),
                  "classes": len(data.class_names)})  # fmt: skip
    parent = store.active_version()
    if config.use_feature_cache and cache is None:
        cache = FeatureCache(data_dir / "cache" / "features")
    built = prepare_model(backbone, method, len(data.class_names), config, data_dir=data_dir)
    source = share_from(backbone) if share_from is not None else None
    if source is not None:
        try:
            share_frozen_weights(source, built.model)
        except ValueError as exc:
            _logger.info("not sharing backbone tensors: %s", exc)
    rep.beat()
    result = fit(built, data, config, cache=cache, should_stop=rep.should_stop, on_progress=rep.progress,
                 on_epoch=rep.epoch, dist=dist)  # fmt: skip
    if dist is not None and dist.rank != 0:  # followers train; rank 0 evaluates the reduced counts and publishes
        return RunOutcome(job_id, "succeeded", metrics=_metrics_json(result.metrics), epochs=result.epochs)
    if rep.lost:
        return RunOutcome(job_id, "lost", epochs=result.epochs)
    if result.stopped:
        why = "cancelled by request" if rep.cancelled else "stopped: worker shutting down"
        return RunOutcome(job_id, "cancelled", why, epochs=result.epochs)
    metrics = _metrics_json(result.metrics)
    rep.beat()
    if rep.lost:  # marked lost while evaluating: publishing now could race a newer job
        return RunOutcome(job_id, "lost", epochs=result.epochs)
    version_id, _ = publish_version(
        store, data_dir, built, class_names=data.class_names, metrics=metrics, snapshot_event_id=snap,
        parent_id=parent["id"] if parent else None, job_id=job_id, train_config=config.to_dict(),
        extra={"variant": row["params"].get("variant"), "epochs": result.epochs, "steps": result.steps,
               "seconds": round(result.seconds, 2), "skipped": data.skipped},
    )  # fmt: skip
    promoted = should_promote(metrics, store.active_version())
    if promoted:
        promote(store, version_id, user=row.get("user") or "auto")
    summary = {k: metrics[k] for k in ("top1", "top5", "macro_f1", "loss", "count") if k in metrics}
    store.log_job_metrics(job_id, step=result.steps, epoch=result.epochs,
                          values={"phase": "holdout", **summary, "version_id": version_id})  # fmt: skip
    top1 = f"holdout top-1 {summary['top1']:.3f}" if "top1" in summary else "no holdout images"
    message = f"version {version_id}: {top1}{', promoted' if promoted else ', not promoted (holdout got worse)'}"
    return RunOutcome(job_id, "succeeded", message, version_id, promoted, metrics, result.epochs)
