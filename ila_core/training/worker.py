"""Training jobs: run one claimed job end to end, and the worker that claims them.

``run_training`` trains on the job's label snapshot (CON-09), writes progress, heartbeats and per-epoch
metrics to the store through its own connection, honours cancellation between batches, evaluates on the
holdout split, publishes a checkpoint atomically, records a model version and auto-promotes it when holdout
top-1 does not get worse. Every failure ends the job as ``failed`` with the error message (FLT-18).

:class:`Worker` claims queued jobs one at a time. ``mode="thread"`` (the app's default) trains in a thread of
the app process and can share the frozen backbone tensors of the served model; ``mode="process"`` runs each
job in a spawned child process (crash and memory isolation) and kills a child whose heartbeat goes stale
(FLT-19). On start it marks jobs whose worker died as failed (FLT-20) and sweeps stray temp files.
``worker_main`` is the standalone ``python -m ila_core worker`` loop.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..adapters import MethodConfig, method_config
from ..checkpoint import sweep_temp_files
from ..config import BackboneConfig
from ..store import LabelStore, StoreError
from .config import TrainConfig, preset
from .dataset import snapshot
from .feature_cache import FeatureCache
from .fit import DistContext, fit, prepare_model, share_frozen_weights
from .versions import DB_NAME, adapters_dir, promote, publish_version, should_promote

__all__ = ["JOB_KIND", "job_params", "parse_job_params", "enqueue_training", "RunOutcome", "run_training", "Worker",
           "worker_main", "default_store_path"]  # fmt: skip

_logger = logging.getLogger(__name__)

JOB_KIND = "train"
EventCallback = Callable[[dict[str, Any]], None]
_MAX_CONFUSION_CLASSES = 100  # larger confusion matrices stay out of JSON rows


def default_store_path(data_dir: Path) -> Path:
    """``<data_dir>/ila.db``."""
    return Path(data_dir) / DB_NAME


# -- job parameters --------------------------------------------------------------------------------


def job_params(
    *,
    variant: str = "ila",
    preset_name: str = "quick",
    backbone: BackboneConfig | None = None,
    method_overrides: Mapping[str, Any] | None = None,
    **train_overrides: Any,
) -> dict[str, Any]:
    """JSON-ready parameters of a training job, validated now (ValueError) rather than in the worker.

    Args:
        variant: method name (``ila``, ``ila+``, ``ila++``, ``adapter``, ...).
        preset_name: ``quick`` or ``paper``.
        backbone: defaults to the shipped DINOv2 ViT-S/14 at 224 px.
        method_overrides: fields of the method config (e.g. ``{"ds_locations": [1, 3]}`` for a 6-block ViT).
        **train_overrides: :class:`TrainConfig` fields (``epochs=5``, ``minutes=2``); None values are ignored.
    """
    b = backbone or BackboneConfig()
    params = {
        "variant": variant,
        "preset": preset_name,
        "method_overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in (method_overrides or {}).items()},
        "train": {k: v for k, v in train_overrides.items() if v is not None},
        "backbone": {"name": b.name, "image_size": b.image_size, "weights": b.weights,
                     "weights_file": None if b.weights_file is None else str(b.weights_file)},  # fmt: skip
    }
    parse_job_params(params)
    return params


def parse_job_params(params: Mapping[str, Any]) -> tuple[BackboneConfig, MethodConfig, TrainConfig]:
    """Configs from :func:`job_params` output; raises ValueError for anything invalid."""
    try:
        b = dict(params.get("backbone") or {})
        if b.get("weights_file"):
            b["weights_file"] = Path(b["weights_file"])
        backbone = BackboneConfig(**b)
        method = method_config(params.get("variant", "ila"), **dict(params.get("method_overrides") or {}))
        config = preset(params.get("preset", "quick"), **dict(params.get("train") or {}))
    except TypeError as exc:  # unknown keyword in a stored job
        raise ValueError(f"invalid job parameters: {exc}") from None
    return backbone, method, config


def enqueue_training(store: LabelStore, *, user: str | None = None, **params: Any) -> int:
    """Queue a training job (see :func:`job_params`); its data snapshot is the current last label event.

    Raises:
        JobBusy: a job is already queued or running (CON-08).
    """
    return store.enqueue_job(JOB_KIND, job_params(**params), user=user)


# -- one job ---------------------------------------------------------------------------------------


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


# -- the worker ------------------------------------------------------------------------------------


class Worker:
    """Claims queued training jobs and runs them, one at a time.

    Args:
        data_dir: the app's data directory.
        store_path: defaults to ``<data_dir>/ila.db``.
        mode: ``"thread"`` (train inside this process) or ``"process"`` (a spawned child per job).
        poll_s: how often to look for work and check heartbeats.
        stale_after_s: a running job without a heartbeat for this long is marked failed (and its child killed).
        share_from: returns a model (e.g. the served one) whose frozen tensors a thread-mode job may share.
        on_event: progress/epoch/finished callback (thread mode; called from the training thread).
        on_promoted: called with the version id after an auto-promotion (e.g. ``predictor.sync``).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        store_path: Path | None = None,
        mode: str = "thread",
        poll_s: float = 1.0,
        stale_after_s: float = 120.0,
        share_from: Callable[[BackboneConfig], Any] | None = None,
        on_event: EventCallback | None = None,
        on_promoted: Callable[[int], None] | None = None,
        progress_interval_s: float = 1.0,
        cache_memory_mb: float = 512,
    ) -> None:
        if mode not in ("thread", "process"):
            raise ValueError(f"mode must be 'thread' or 'process', got {mode!r}")
        self.data_dir = Path(data_dir)
        self.store_path = Path(store_path) if store_path else default_store_path(self.data_dir)
        self.mode, self.poll_s, self.stale_after_s = mode, poll_s, stale_after_s
        self.share_from, self.on_event, self.on_promoted = share_from, on_event, on_promoted
        self.progress_interval_s = progress_interval_s
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._loop_thread: threading.Thread | None = None
        self._job_thread: threading.Thread | None = None
        self._child: Any = None
        self._child_stop: Any = None
        self._cache: FeatureCache | None = None
        self._cache_mb = cache_memory_mb
        self.last_outcome: RunOutcome | None = None

    # lifecycle

    def startup_sweep(self) -> list[int]:
        """Fail jobs whose worker died (including ours before a restart); sweep temp files if nothing runs."""
        me = os.getpid()
        from ..store import pid_alive

        with LabelStore.open(self.store_path) as store:
            # No trainer of this process exists yet, so a 'running' job carrying our pid is a leftover (pid reuse).
            lost = store.mark_lost_jobs(stale_after_s=self.stale_after_s, alive=lambda pid: pid != me and pid_alive(pid))
            idle = store.active_job() is None or store.active_job()["status"] == "queued"
        if lost:
            _logger.warning("marked jobs %s failed: their worker died", lost)
        if idle:
            sweep_temp_files(adapters_dir(self.data_dir))
        return lost

    def start(self) -> None:
        """Sweep, then poll for jobs in a background thread."""
        if self._loop_thread is not None and self._loop_thread.is_alive():
            return
        self.startup_sweep()
        self._stop.clear()
        self._loop_thread = threading.Thread(target=self._loop, name="ila-worker", daemon=True)
        self._loop_thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop after the current batch (the running job ends 'cancelled') and wait for the threads."""
        self._stop.set()
        if self._child_stop is not None:
            self._child_stop.set()
        for t in (self._loop_thread, self._job_thread):
            if t is not None:
                t.join(timeout)
        if self._child is not None and self._child.is_alive():
            self._child.join(timeout)
            if self._child.is_alive():
                self._child.kill()

    @property
    def busy(self) -> bool:
        """True while a job thread or child process is running."""
        return bool((self._job_thread and self._job_thread.is_alive()) or (self._child and self._child.is_alive()))

    # work

    def _feature_cache(self) -> FeatureCache:
        if self._cache is None:
            self._cache = FeatureCache(self.data_dir / "cache" / "features", max_memory_mb=self._cache_mb)
        return self._cache

    def claim(self) -> dict[str, Any] | None:
        """Claim the oldest queued job for this worker (None if there is none)."""
        with LabelStore.open(self.store_path, quick_check=False) as store:
            return store.claim_job(self.worker_id, os.getpid())

    def run_once(self) -> RunOutcome | None:
        """Claim one job and run it in the calling thread; None if nothing was queued."""
        job = self.claim()
        if job is None:
            return None
        return self._run(job)

    def _run(self, job: dict[str, Any]) -> RunOutcome:
        outcome = run_training(job, self.store_path, self.data_dir, self._stop, self.on_event,
                               cache=self._feature_cache(), share_from=self.share_from,
                               progress_interval_s=self.progress_interval_s)  # fmt: skip
        self.last_outcome = outcome
        if outcome.promoted and outcome.version_id is not None and self.on_promoted is not None:
            try:
                self.on_promoted(outcome.version_id)
            except Exception:  # the serving side logs and keeps its model; the job itself succeeded
                _logger.exception("on_promoted callback failed for version %s", outcome.version_id)
        return outcome

    def watchdog(self) -> list[int]:
        """Mark stale or orphaned running jobs failed; kill our child if its job was one of them."""
        with LabelStore.open(self.store_path, quick_check=False) as store:
            child_pid = self._child.pid if self._child is not None else None
            child_jobs = [j["id"] for j in store.jobs(limit=5) if j["status"] == "running" and j["pid"] == child_pid]
            lost = store.mark_lost_jobs(stale_after_s=self.stale_after_s)
        if lost:
            _logger.warning("watchdog: jobs %s stalled or lost their worker; marked failed", lost)
        if child_pid is not None and set(lost) & set(child_jobs) and self._child.is_alive():
            _logger.warning("watchdog: killing stalled training process %d", child_pid)
            self._child.kill()
        return lost

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.watchdog()
                if self.mode == "thread":
                    self._poll_thread()
                else:
                    self._poll_process()
            except Exception:  # the loop must survive a busy or briefly unavailable store
                _logger.exception("worker loop iteration failed")
            self._stop.wait(self.poll_s)

    def _poll_thread(self) -> None:
        if self._job_thread is not None and self._job_thread.is_alive():
            with LabelStore.open(self.store_path, quick_check=False) as store:
                if store.active_job() is not None and store.active_job()["status"] == "running":
                    return
            # The job was marked failed while its thread is still stuck: leave the thread, take new work.
            _logger.warning("abandoning stuck training thread %s", self._job_thread.name)
        job = self.claim()
        if job is not None:
            self._job_thread = threading.Thread(target=self._run, args=(job,), name=f"ila-train-{job['id']}",
                                                daemon=True)  # fmt: skip
            self._job_thread.start()

    def _poll_process(self) -> None:
        if self._child is not None:
            if self._child.is_alive():
                return
            self._child.join()
            if self._child.exitcode not in (0, None):
                _logger.warning("training process exited with code %s", self._child.exitcode)
            self._child = None
            with LabelStore.open(self.store_path, quick_check=False) as store:
                store.mark_lost_jobs(stale_after_s=self.stale_after_s)  # its pid is dead now
        with LabelStore.open(self.store_path, quick_check=False) as store:
            queued = store.active_job()
        if queued is None or queued["status"] != "queued":
            return
        ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA or threads (CFG-07)
        self._child_stop = ctx.Event()
        self._child = ctx.Process(target=worker_main, args=(str(self.data_dir),), name="ila-train",
                                  kwargs={"store_path": str(self.store_path), "once": True,
                                          "stop_event": self._child_stop, "stale_after_s": self.stale_after_s})  # fmt: skip
        self._child.start()


def worker_main(
    data_dir: Path | str,
    *,
    store_path: Path | str | None = None,
    once: bool = False,
    poll_s: float = 1.0,
    stale_after_s: float = 120.0,
    stop_event: Any = None,
) -> int:
    """The standalone worker: ``python -m ila_core worker --data-dir DIR`` (SIGTERM/SIGINT stop it cleanly).

    Args:
        data_dir: the app's data directory.
        store_path: defaults to ``<data_dir>/ila.db``.
        once: run at most one job, then return (process-mode children).
        poll_s: idle polling interval.
        stale_after_s: heartbeat age after which other running jobs count as lost.
        stop_event: an extra event (e.g. a multiprocessing one) that also stops the worker.

    Returns:
        0, or 1 if the last job failed.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    worker = Worker(Path(data_dir), store_path=Path(store_path) if store_path else None, poll_s=poll_s,
                    stale_after_s=stale_after_s)  # fmt: skip
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: worker._stop.set())
    if stop_event is not None:
        threading.Thread(target=lambda: (stop_event.wait(), worker._stop.set()), daemon=True).start()
    if not once:
        worker.startup_sweep()
    while not worker._stop.is_set():
        outcome = worker.run_once()
        if once:
            break
        if outcome is None:
            worker._stop.wait(poll_s)
    last = worker.last_outcome
    return 1 if last is not None and last.status == "failed" else 0
