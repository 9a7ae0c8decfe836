"""Run one claimed training job end to end, reporting through the store.

``run_training`` works on the job's label snapshot (CON-09) in two stages. First the probe: the frozen
embeddings (computed once per image, cached), a closed-form head, published as a ``probe`` version within
seconds and served when it is at least as good as the active version on this holdout. Then the job's
method (ILA by default) trains with progress, heartbeats and per-epoch metrics written through the job's own
connection and cancellation honoured between batches; it is published as a version and served only when its
holdout top-1 and macro-F1 are at least those of the probe and of the version active at the start, on the
same holdout (:mod:`ila_core.serving.promotion`); otherwise it is kept with a note saying why. Every failure
ends the job as ``failed`` with the error message (FLT-18); a job finished elsewhere meanwhile (watchdog,
restart sweep) publishes nothing.
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
from ..embeddings import EmbeddingStore, embeddings_dir
from ..serving.holdout import holdout_key, metrics_on_holdout
from ..serving.probe import fit_probe_version
from ..training.weakness import data_warnings
from ..serving.promotion import Decision, Rival, decide
from ..serving.versions import promote, publish_version
from ..training.dataset import TrainingSet, snapshot
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
    versions: tuple[dict[str, Any], ...] = ()  # every version the job published: id, kind, metrics, promoted, note
    warnings: tuple[str, ...] = ()  # why the result may be weak (e.g. the time budget cut training)
    serving: dict[str, Any] | None = None  # the version served after the job: version_id, kind, metrics (this holdout)


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

    def note_warnings(self, warnings: tuple[str, ...]) -> None:
        """Why the result may be weak, on the job row now (not throttled like progress)."""
        if not self.writes:
            return
        try:
            self.store.update_progress(self.job_id, warnings=list(warnings))
        except StoreError as exc:
            _logger.warning("warnings for job %d not saved: %s", self.job_id, exc)

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
    embeddings: EmbeddingStore | None = None,
) -> RunOutcome:
    """Run one job that this worker has claimed (status 'running'); the job row always ends final.

    Args:
        job: the claimed job row or its id.
        store_path: the SQLite store; this function opens its own connection.
        data_dir: images, adapters, cache and default weights live here.
        stop: set it to stop between batches (the job ends 'cancelled').
        on_event: gets ``{"kind": "progress" | "epoch" | "promoted" | "finished", "job_id", ...}`` dicts (UI
            callbacks; "promoted" carries the ``version_id`` now active, so serving can follow at once).
        cache: a feature cache kept across jobs (a fresh one under ``<data_dir>/cache/features`` otherwise).
        share_from: returns a model whose frozen tensors the new model may share, for a given backbone.
        progress_interval_s: minimum time between progress writes / cancel checks.
        dist: under torchrun, this process's rank; every rank calls this, only rank 0 writes (no cancel).
        embeddings: the frozen-embedding store kept across jobs (one under ``<data_dir>/cache/embeddings`` otherwise).
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
            outcome = _train_job(store, row, data_dir, rep, cache, share_from, dist, embeddings)
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
              "version_id": outcome.version_id, "promoted": outcome.promoted, "versions": list(outcome.versions)})  # fmt: skip
        return outcome


def _metrics_json(metrics: Any) -> dict[str, Any]:
    if metrics is None:
        return {}
    out = metrics.to_dict()
    if len(out["per_class_accuracy"]) > _MAX_CONFUSION_CLASSES:
        out.pop("confusion")
    return out


def _publish(store: LabelStore, data_dir: Path, rep: _Reporter, row: dict[str, Any], built: Any, data: TrainingSet,
             metrics: dict[str, Any], *, kind: str, rivals: list[Rival], train_config: dict[str, Any],
             extra: dict[str, Any], note: str = "") -> tuple[dict[str, Any], Decision]:  # fmt: skip
    """Publish one version, decide whether it is served, record the decision; the version's summary row."""
    job_id, snap = int(row["id"]), int(row["snapshot_event_id"])
    active = store.active_version()
    version_id, _ = publish_version(
        store, data_dir, built, class_names=data.class_names, metrics=metrics, snapshot_event_id=snap,
        parent_id=active["id"] if active else None, job_id=job_id, train_config=train_config, kind=kind,
        extra={**extra, "kind": kind, "variant": row["params"].get("variant"), "skipped": data.skipped},
    )  # fmt: skip
    decision = decide(metrics, rivals, has_active=active is not None)
    if decision.promote:
        promote(store, version_id, user=row.get("user") or "auto")
        rep.emit({"kind": "promoted", "job_id": job_id, "version_id": version_id})
    store.set_version_note(version_id, note + decision.reason)
    summary = {k: metrics[k] for k in ("top1", "top5", "macro_f1", "loss", "count") if k in metrics}
    store.log_job_metrics(job_id, step=int(extra.get("steps", 0)), epoch=extra.get("epochs"),
                          values={"phase": "holdout", "kind": kind, **summary, "version_id": version_id})  # fmt: skip
    return {"version_id": version_id, "kind": kind, "steps": int(extra.get("steps", 0)), "metrics": summary,
            "promoted": decision.promote, "note": note + decision.reason}, decision  # fmt: skip


def _start_rival(store: LabelStore, data: TrainingSet, data_dir: Path) -> Rival | None:
    """The version active when the job started, measured on this job's holdout (or why it cannot be)."""
    active = store.active_version()
    if active is None:
        return None
    metrics, why = metrics_on_holdout(active, data, data_dir)
    return Rival(f"the served version {active['id']}", metrics, why)


def _describe(entry: dict[str, Any]) -> str:
    top1 = entry["metrics"].get("top1")
    score = f"holdout top-1 {top1:.3f}" if top1 is not None else "no holdout images"
    return f"{entry['kind']} version {entry['version_id']}: {score}, {entry['note']}"


def _train_job(store: LabelStore, row: dict[str, Any], data_dir: Path, rep: _Reporter, cache: FeatureCache | None,
               share_from: Callable[[BackboneConfig], Any] | None, dist: DistContext | None = None,
               embeddings: EmbeddingStore | None = None) -> RunOutcome:  # fmt: skip
    job_id = int(row["id"])
    params = row["params"]
    backbone, method, config = parse_job_params(params)
    variant = params.get("variant", "ila")
    snap = int(row["snapshot_event_id"])
    data = snapshot(store, data_dir, max_event_id=snap)
    weak = data_warnings(data)  # said on the job card from the start, and with every version it publishes
    rep.progress({"phase": "prepare", "train_images": len(data.train), "holdout_images": len(data.holdout),
                  "classes": len(data.class_names), "warnings": list(weak)})  # fmt: skip
    leader = dist is None or dist.rank == 0
    key = holdout_key(data)
    start_rival = _start_rival(store, data, data_dir) if leader else None
    source = share_from(backbone) if share_from is not None else None
    published: list[dict[str, Any]] = []
    probe_rival = None

    if leader and (variant == "probe" or params.get("probe", True)):
        embeddings = embeddings or EmbeddingStore(embeddings_dir(data_dir))
        run = fit_probe_version(backbone, data, store=embeddings, data_dir=data_dir, resize_ratio=config.resize_ratio,
                                hflip=config.hflip, seed=config.seed, share_from=source, should_stop=rep.should_stop,
                                on_progress=rep.progress)  # fmt: skip
        if run is None or rep.lost:
            return _ended_early(job_id, rep, published)
        metrics = {**_metrics_json(run.metrics), "holdout_key": key}
        entry, _ = _publish(store, data_dir, rep, row, run.built, data, metrics, kind="probe",
                            rivals=[start_rival] if start_rival else [], train_config=config.to_dict(),
                            extra={**run.extra(), "steps": 0, "epochs": 0, "warnings": list(weak)})  # fmt: skip
        published.append(entry)
        probe_rival = Rival(f"the probe (version {entry['version_id']})", metrics)
        if source is None:
            source = run.built.model  # the ILA model below shares the probe's frozen tensors
    if variant == "probe":
        return _finished(job_id, published, weak, serving=_serving(store, published, start_rival))

    if config.use_feature_cache and cache is None:
        cache = FeatureCache(data_dir / "cache" / "features")
    built = prepare_model(backbone, method, len(data.class_names), config, data_dir=data_dir)
    if source is not None:
        try:
            share_frozen_weights(source, built.model)
        except ValueError as exc:
            _logger.info("not sharing backbone tensors: %s", exc)
    rep.beat()
    kind = "ila" if variant.startswith("ila") else "baseline"
    rivals = [r for r in (probe_rival, start_rival) if r is not None]
    on_start = None
    if leader and params.get("publish_start", True):
        on_start = _start_publisher(store, data_dir, rep, row, built, data, key, kind, rivals, published, weak,
                                    config.to_dict())  # fmt: skip
    result = fit(built, data, config, cache=cache, should_stop=rep.should_stop, on_progress=rep.progress,
                 on_epoch=rep.epoch, dist=dist, on_start=on_start)  # fmt: skip
    if not leader:  # followers train; rank 0 evaluates the reduced counts and publishes
        return RunOutcome(job_id, "succeeded", metrics=_metrics_json(result.metrics), epochs=result.epochs)
    if rep.lost or result.stopped:
        return _ended_early(job_id, rep, published, result.epochs)
    rep.beat()
    if rep.lost:  # marked lost while evaluating: publishing now could race a newer job
        return RunOutcome(job_id, "lost", epochs=result.epochs)
    metrics = {**_metrics_json(result.metrics), "holdout_key": key}
    warnings = (*weak, *(w for w in (result.shortfall(), result.cache_note) if w))
    rep.note_warnings(warnings)
    entry, _ = _publish(store, data_dir, rep, row, built, data, metrics, kind=kind, rivals=rivals,
                        train_config=config.to_dict(),
                        extra={"epochs": result.epochs, "steps": result.steps,
                               "steps_requested": result.steps_requested, "budget_cut": result.budget_cut,
                               "seconds": round(result.seconds, 2), "train_seconds": result.train_seconds,
                               "head_init": result.head_init, "warnings": list(warnings),
                               "pace": _pace_record(result, data)})  # fmt: skip
    published.append(entry)
    return _finished(job_id, published, warnings, metrics=metrics, epochs=result.epochs,
                     serving=_serving(store, published, start_rival))  # fmt: skip


def _pace_record(result: Any, data: TrainingSet) -> dict[str, Any]:
    """What the Train tab's time estimate reads from this run (:mod:`ila_core.jobs.estimate`)."""
    held = result.residency
    return {"train_images": len(data.train), "holdout_images": len(data.holdout), "steps": result.steps,
            "train_seconds": result.train_seconds, "fit_seconds": round(result.seconds, 2),
            "fill_views": held.filled_views if held else 0, "fill_seconds": held.fill_seconds if held else 0.0, "cache_held": held.train if held else None,
            "entry_bytes": held.entry_bytes if held else None,
            "capacity_bytes": held.capacity_bytes if held else None}  # fmt: skip


def _start_publisher(store: LabelStore, data_dir: Path, rep: _Reporter, row: dict[str, Any], built: Any,
                     data: TrainingSet, key: Any, kind: str, rivals: list[Rival], published: list[dict[str, Any]],
                     weak: tuple[str, ...], train_config: dict[str, Any]) -> Callable[[Any], None]:  # fmt: skip
    """A callback for ``fit(on_start=...)``: publish the network as training starts (LP-FT head, adapters at init).

    The recipe study found this starting point (the late DS shortcut with a closed-form head) as good on unseen
    cultivars as the trained network at the quick budget, so it competes under the same rule as every version,
    and it becomes a rival the trained version must match before it is served.
    """

    def publish_start(start_metrics: Any) -> None:
        if rep.lost:
            return
        metrics = {**_metrics_json(start_metrics), "holdout_key": key}
        entry, _ = _publish(store, data_dir, rep, row, built, data, metrics, kind=kind, rivals=list(rivals),
                            train_config=train_config,
                            extra={"steps": 0, "epochs": 0, "stage": "start", "warnings": list(weak)},
                            note="closed-form head on the untrained adapters (step 0); ")  # fmt: skip
        published.append(entry)
        rivals.append(Rival(f"the step-0 network (version {entry['version_id']})", metrics))

    return publish_start


def _serving(store: LabelStore, published: list[dict[str, Any]], start_rival: Rival | None) -> dict[str, Any] | None:
    """Which version serves after the job, with its metrics on this job's holdout where known."""
    active = store.active_version()
    if active is None:
        return None
    for entry in published:
        if entry["version_id"] == active["id"]:
            return {"version_id": active["id"], "kind": entry["kind"], "metrics": entry["metrics"]}
    metrics = start_rival.metrics if start_rival is not None and start_rival.metrics else active.get("metrics") or {}
    summary = {k: metrics[k] for k in ("top1", "top5", "macro_f1", "loss", "count") if k in metrics}
    return {"version_id": active["id"], "kind": active.get("kind", "ila"), "metrics": summary}


def _finished(job_id: int, published: list[dict[str, Any]], warnings: tuple[str, ...], *,
              metrics: dict[str, Any] | None = None, epochs: int = 0,
              serving: dict[str, Any] | None = None) -> RunOutcome:  # fmt: skip
    last = published[-1]
    message = "; ".join([*(_describe(e) for e in published), *warnings])
    return RunOutcome(job_id, "succeeded", message, last["version_id"], any(e["promoted"] for e in published),
                      metrics if metrics is not None else dict(last["metrics"]), epochs, tuple(published), warnings,
                      serving)  # fmt: skip


def _ended_early(job_id: int, rep: _Reporter, published: list[dict[str, Any]], epochs: int = 0) -> RunOutcome:
    if rep.lost:
        return RunOutcome(job_id, "lost", epochs=epochs, versions=tuple(published))
    why = "cancelled by request" if rep.cancelled else "stopped: worker shutting down"
    if published:
        why += "; " + "; ".join(_describe(e) for e in published)
    last = published[-1]["version_id"] if published else None
    return RunOutcome(job_id, "cancelled", why, last, any(e["promoted"] for e in published), epochs=epochs,
                      versions=tuple(published))
