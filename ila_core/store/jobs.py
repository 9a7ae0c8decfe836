"""Training jobs: queue, claim, progress, heartbeats, cancellation, and the lost-worker sweep.

Job state lives in SQLite so a page refresh or an app restart loses nothing and the UI can poll it
through its own connection. One job is queued or running at a time (a partial unique index makes
that a database rule, so two clicks racing in two processes still get one job).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from .base import StoreBase, load_json_columns
from .errors import JobBusy, UnknownJob
from .validation import check_optional, check_text, check_user, dump_json, json_safe

__all__ = ["JobsMixin", "JOB_STATUSES", "FINAL_STATUSES", "LOST_MESSAGE", "pid_alive"]

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")
LOST_MESSAGE = "lost: worker died"
_JSON_COLUMNS = ("params", "progress")


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists on this host (signal 0 probes without sending)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it belongs to another user
    return True


class JobsMixin(StoreBase):
    """Methods over ``jobs`` and ``job_metrics``."""

    def enqueue_job(self, kind: str, params: dict[str, Any], *, user: str | None = None) -> int:
        """Queue a job whose data snapshot is the current last label event.

        Raises:
            JobBusy: a job is already queued or running.
        """
        kind = check_text(kind, "job kind", max_chars=50)
        params_json, user = dump_json(params, "job params"), check_user(user)
        with self._write("job"):
            live = self._row("SELECT id, kind, status FROM jobs WHERE status IN ('queued', 'running') LIMIT 1")
            if live is not None:
                what = "training" if live["kind"] in ("train", "training") else live["kind"]
                raise JobBusy(f"a {what} job is already {live['status']} (job {live['id']})", live["id"])
            snapshot = self._scalar("SELECT COALESCE(MAX(id), 0) FROM label_events")
            cursor = self._exec(
                "INSERT INTO jobs (kind, status, params, user, snapshot_event_id, created_at)"
                " VALUES (?, 'queued', ?, ?, ?, ?)",
                [kind, params_json, user, snapshot, self._now()],
            )
            return int(cursor.lastrowid)

    def claim_job(self, worker_id: str, pid: int) -> dict[str, Any] | None:
        """Move the oldest queued job to 'running' for this worker; None when nothing is queued."""
        worker_id = check_text(worker_id, "worker_id", max_chars=200)
        with self._write("job claim"):
            job_id = self._scalar("SELECT id FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 1")
            if job_id is None:
                return None
            now = self._now()
            self._exec(
                "UPDATE jobs SET status = 'running', worker_id = ?, pid = ?, started_at = ?, heartbeat_at = ?"
                " WHERE id = ?",
                [worker_id, int(pid), now, now, job_id],
            )
        return self.job(job_id)

    def update_progress(self, job_id: int, **progress: Any) -> bool:
        """Merge progress fields (epoch, step, total_steps, loss, lr, eta_s, ...) and beat the heart.

        Returns:
            False if the job is no longer running (cancelled, or marked lost): the worker should stop.
        """
        dump_json(progress, "job progress")  # refuse non-JSON values before taking the lock
        with self._write("job progress"):
            row = self._row("SELECT status, progress FROM jobs WHERE id = ?", [job_id])
            if row is None:
                raise UnknownJob(f"unknown job id {job_id!r}")
            if row["status"] != "running":
                return False
            merged = load_json_columns(row, "progress")["progress"] | json_safe(progress)
            self._exec(
                "UPDATE jobs SET progress = ?, heartbeat_at = ? WHERE id = ?",
                [dump_json(merged, "job progress"), self._now(), job_id],
            )
        return True

    def heartbeat(self, job_id: int) -> bool:
        """Record that the worker is alive; False if the job is no longer running."""
        with self._write("heartbeat"):
            self._require_job(job_id)
            cursor = self._exec(
                "UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND status = 'running'", [self._now(), job_id]
            )
            return cursor.rowcount == 1

    def log_job_metrics(self, job_id: int, *, step: int, epoch: int | None, values: dict[str, Any]) -> int:
        """Append one metrics row (e.g. train loss, lr, holdout accuracy) for a job."""
        values_json = dump_json(values, "metric values")
        with self._write("job metrics"):
            self._require_job(job_id)
            cursor = self._exec(
                'INSERT INTO job_metrics (job_id, step, epoch, "values", created_at) VALUES (?, ?, ?, ?, ?)',
                [job_id, int(step), None if epoch is None else int(epoch), values_json, self._now()],
            )
            return int(cursor.lastrowid)

    def job_metrics(self, job_id: int) -> list[dict[str, Any]]:
        """A job's metrics rows in order, ``values`` parsed."""
        rows = self._rows("SELECT * FROM job_metrics WHERE job_id = ? ORDER BY id", [job_id])
        return [load_json_columns(row, "values") for row in rows]

    def request_cancel(self, job_id: int) -> None:
        """Ask a running job to stop (the worker polls :meth:`cancel_requested`); a queued job is cancelled now."""
        with self._write("cancel request"):
            self._require_job(job_id)
            self._exec(
                "UPDATE jobs SET status = 'cancelled', cancel_requested = 1, finished_at = ?,"
                " message = 'cancelled before start' WHERE id = ? AND status = 'queued'",
                [self._now(), job_id],
            )
            self._exec("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'", [job_id])

    def cancel_requested(self, job_id: int) -> bool:
        """True once someone asked this job to stop."""
        value = self._scalar("SELECT cancel_requested FROM jobs WHERE id = ?", [job_id])
        if value is None:
            raise UnknownJob(f"unknown job id {job_id!r}")
        return bool(value)

    def finish_job(
        self, job_id: int, status: str, *, message: str | None = None, result_version_id: int | None = None
    ) -> bool:
        """Close a queued or running job with a final status.

        Returns:
            False (and changes nothing) if the job had already finished, e.g. it was marked lost.
        """
        if status not in FINAL_STATUSES:
            raise ValueError(f"unknown final job status {status!r} (expected one of {', '.join(FINAL_STATUSES)})")
        message = check_optional(message, "job message", 4000, allow_newlines=True)
        with self._write("job result"):
            self._require_job(job_id)
            cursor = self._exec(
                "UPDATE jobs SET status = ?, message = ?, result_version_id = ?, finished_at = ?"
                " WHERE id = ? AND status IN ('queued', 'running')",
                [status, message, result_version_id, self._now(), job_id],
            )
            return cursor.rowcount == 1

    def job(self, job_id: int) -> dict[str, Any]:
        """One job row with ``params`` and ``progress`` parsed; raises UnknownJob."""
        row = self._row("SELECT * FROM jobs WHERE id = ?", [job_id])
        if row is None:
            raise UnknownJob(f"unknown job id {job_id!r}")
        return load_json_columns(row, *_JSON_COLUMNS)

    def jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest jobs first."""
        rows = self._rows("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", [int(limit)])
        return [load_json_columns(row, *_JSON_COLUMNS) for row in rows]

    def active_job(self) -> dict[str, Any] | None:
        """The queued or running job, if any."""
        row = self._row("SELECT * FROM jobs WHERE status IN ('queued', 'running') ORDER BY id DESC LIMIT 1")
        return load_json_columns(row, *_JSON_COLUMNS)

    def stalled_jobs(self, *, stale_after_s: float = 60) -> list[dict[str, Any]]:
        """Running jobs whose last heartbeat is older than ``stale_after_s`` (or that never beat)."""
        cutoff = self._clock() - timedelta(seconds=stale_after_s)
        rows = self._rows("SELECT * FROM jobs WHERE status = 'running' ORDER BY id")
        return [load_json_columns(r, *_JSON_COLUMNS) for r in rows
                if r["heartbeat_at"] is None or datetime.fromisoformat(r["heartbeat_at"]) < cutoff]  # fmt: skip

    def mark_lost_jobs(
        self, *, stale_after_s: float = 60, alive: Callable[[int], bool] | None = None, stall_note: str | None = None
    ) -> list[int]:
        """Fail running jobs whose pid is gone or whose heartbeat is older than ``stale_after_s`` (FLT-19, FLT-20).

        Call it at app start (a job 'running' from before the restart is lost) and periodically.

        Args:
            stale_after_s: heartbeat age that counts as stalled.
            alive: pid probe; defaults to :func:`pid_alive` (meaningful for workers on this host).
            stall_note: appended to a stalled job's message (e.g. what the watchdog did to its process).

        Returns:
            Ids of the jobs marked ``failed``: ``"lost: worker died"`` when the pid is gone, else
            ``"stalled: no heartbeat for N s (limit L s)"`` (plus ``stall_note``).
        """
        alive = alive or pid_alive
        lost: list[int] = []
        with self._write("job sweep"):
            now = self._clock()
            for row in self._rows("SELECT id, pid, heartbeat_at FROM jobs WHERE status = 'running' ORDER BY id"):
                beat = row["heartbeat_at"]
                age = None if beat is None else (now - datetime.fromisoformat(beat)).total_seconds()
                if row["pid"] is not None and not alive(int(row["pid"])):
                    message = LOST_MESSAGE
                elif age is None or age > stale_after_s:
                    shown = "ever" if age is None else f"{age:.0f} s"
                    message = f"stalled: no heartbeat for {shown} (limit {stale_after_s:g} s)"
                    message += f"; {stall_note}" if stall_note else ""
                else:
                    continue
                self._exec(
                    "UPDATE jobs SET status = 'failed', message = ?, finished_at = ? WHERE id = ?",
                    [message, self._now(), row["id"]],
                )
                lost.append(int(row["id"]))
        return lost

    def _require_job(self, job_id: int) -> None:
        if self._scalar("SELECT 1 FROM jobs WHERE id = ?", [job_id]) is None:
            raise UnknownJob(f"unknown job id {job_id!r}")
