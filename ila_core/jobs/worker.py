"""The training worker: claims queued jobs one at a time and runs them.

``mode="thread"`` (the app's default) trains in a thread of the app process and can share the frozen
backbone tensors of the served model; ``mode="process"`` runs each job in a spawned child process (crash and
memory isolation) and kills a child whose heartbeat goes stale (FLT-19). On start it marks jobs whose worker
died as failed (FLT-20) and sweeps stray checkpoint temp files (FLT-02). ``worker_main`` is the standalone
``python -m ila_core worker`` loop.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..checkpoint import sweep_temp_files
from ..embeddings import EmbeddingStore, embeddings_dir
from ..config import BackboneConfig
from ..serving.paths import adapters_dir
from ..store import LabelStore, default_store_path, pid_alive
from ..training.feature_cache import FeatureCache
from .params import JOB_KIND, enqueue_training, job_params, parse_job_params
from .runner import EventCallback, RunOutcome, run_training

__all__ = ["Worker", "worker_main", "run_training", "RunOutcome", "enqueue_training", "job_params",
           "parse_job_params", "default_store_path", "JOB_KIND"]  # fmt: skip

_logger = logging.getLogger(__name__)


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
        embeddings: the frozen-embedding store (shared with the app's background embedder); one under
            ``<data_dir>/cache/embeddings`` by default.
        on_promoted: called with the version id after each auto-promotion, as it happens (e.g. ``predictor.sync``;
            a job may promote its probe within seconds and its ILA version minutes later).
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
        embeddings: EmbeddingStore | None = None,
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
        self._embeddings: EmbeddingStore | None = embeddings
        self._returned: set[str] = set()  # job threads whose run_training returned (they may still be exiting)
        self._abandoned: set[str] = set()  # stuck job threads already reported
        self._cache_mb = cache_memory_mb
        self.last_outcome: RunOutcome | None = None

    # lifecycle

    def startup_sweep(self) -> list[int]:
        """Fail jobs whose worker died (including ours before a restart); sweep temp files if nothing runs."""
        me = os.getpid()

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
            self._child_stop.value = 1  # a lock-free shared flag: a killed child can never leave it locked
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

    def _embedding_store(self) -> EmbeddingStore:
        if self._embeddings is None:
            self._embeddings = EmbeddingStore(embeddings_dir(self.data_dir))
        return self._embeddings

    def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("kind") == "finished":  # this thread finished its job; what follows is winding down
            self._returned.add(threading.current_thread().name)
        if self.on_event is not None:
            self.on_event(event)
        if event.get("kind") == "promoted" and self.on_promoted is not None:
            try:
                self.on_promoted(int(event["version_id"]))
            except Exception:  # the serving side logs and keeps its model; the job goes on
                _logger.exception("on_promoted callback failed for version %s", event.get("version_id"))

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
        outcome = run_training(job, self.store_path, self.data_dir, self._stop, self._on_event,
                               cache=self._feature_cache(), share_from=self.share_from,
                               progress_interval_s=self.progress_interval_s,
                               embeddings=self._embedding_store())  # fmt: skip
        self.last_outcome = outcome
        return outcome

    def _run_and_mark(self, job: dict[str, Any]) -> None:
        try:
            self._run(job)
        finally:
            self._returned.add(threading.current_thread().name)

    def watchdog(self) -> list[int]:
        """Fail running jobs whose heartbeat stalled or whose worker died; kill our child if it stalled (FLT-19).

        Our own stalled child is killed (and reaped) *before* the jobs are marked, because a frozen child may
        hold the store's write lock.
        """
        child = self._child
        with LabelStore.open(self.store_path, quick_check=False) as store:
            stalled = store.stalled_jobs(stale_after_s=self.stale_after_s)
        killed = child is not None and child.is_alive() and any(j["pid"] == child.pid for j in stalled)
        if killed:
            _logger.warning("watchdog: killing stalled training process %d", child.pid)
            child.kill()
            child.join(5.0)  # reap it, so its pid is gone and its store locks are released
        reaped = child.pid if killed else None  # its job stalled; the pid is gone only because we killed it
        note = "training process killed by the watchdog" if killed else None
        with LabelStore.open(self.store_path, quick_check=False) as store:
            lost = store.mark_lost_jobs(
                stale_after_s=self.stale_after_s, alive=lambda pid: pid == reaped or pid_alive(pid), stall_note=note
            )
        if lost:
            _logger.warning("watchdog: jobs %s stalled or lost their worker; marked failed", lost)
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
            if self._job_thread.name in self._returned:
                return  # its job is finished and the thread is winding down (callbacks): nothing is stuck
            # The job was marked failed while its thread is still stuck: leave the thread, take new work.
            if self._job_thread.name not in self._abandoned:
                self._abandoned.add(self._job_thread.name)
                _logger.warning("abandoning stuck training thread %s", self._job_thread.name)
        job = self.claim()
        if job is not None:
            self._job_thread = threading.Thread(target=self._run_and_mark, args=(job,), name=f"ila-train-{job['id']}",
                                                daemon=True)  # fmt: skip
            self._job_thread.start()

    def _poll_process(self) -> None:
        if self._child is not None:
            if self._child.is_alive():
                return
            self._child.join()
            crashed = self._child.exitcode not in (0, None)
            if crashed:
                _logger.warning("training process exited with code %s", self._child.exitcode)
            self._child = None
            with LabelStore.open(self.store_path, quick_check=False) as store:
                store.mark_lost_jobs(stale_after_s=self.stale_after_s)  # its pid is dead now
            if crashed:  # killed or crashed: it may have died mid-publish; no other trainer runs now
                sweep_temp_files(adapters_dir(self.data_dir))
        with LabelStore.open(self.store_path, quick_check=False) as store:
            queued = store.active_job()
        if queued is None or queued["status"] != "queued":
            return
        ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA or threads (CFG-07)
        self._child_stop = ctx.RawValue("b", 0)
        self._child = ctx.Process(target=worker_main, args=(str(self.data_dir),), name="ila-train",
                                  kwargs={"store_path": str(self.store_path), "once": True,
                                          "stop_flag": self._child_stop, "stale_after_s": self.stale_after_s})  # fmt: skip
        self._child.start()


def worker_main(
    data_dir: Path | str,
    *,
    store_path: Path | str | None = None,
    once: bool = False,
    poll_s: float = 1.0,
    stale_after_s: float = 120.0,
    stop_flag: Any = None,
) -> int:
    """The standalone worker: ``python -m ila_core worker --data-dir DIR`` (SIGTERM/SIGINT stop it cleanly).

    Args:
        data_dir: the app's data directory.
        store_path: defaults to ``<data_dir>/ila.db``.
        once: run at most one job, then return (process-mode children).
        poll_s: idle polling interval.
        stale_after_s: heartbeat age after which other running jobs count as lost.
        stop_flag: a shared ``multiprocessing.RawValue`` the parent sets to 1 to stop this worker. (Not an Event:
            setting a multiprocessing Event blocks forever if a process that waited on it has died.)

    Returns:
        0, or 1 if the last job failed.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    worker = Worker(Path(data_dir), store_path=Path(store_path) if store_path else None, poll_s=poll_s,
                    stale_after_s=stale_after_s)  # fmt: skip
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: worker._stop.set())
    if stop_flag is not None:
        threading.Thread(target=_watch_flag, args=(stop_flag, worker._stop), daemon=True).start()
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


def _watch_flag(flag: Any, stop: threading.Event, interval_s: float = 0.2) -> None:
    while not stop.is_set():
        if flag.value:
            stop.set()
            return
        stop.wait(interval_s)
