"""Large server-path imports run in a background thread, so no request slot waits on them (API-21).

One import runs at a time. Its progress and results live here (in memory) and the Data tab's timer reads
them; an import is idempotent (a re-run stores no duplicates), so a restart mid-import loses no data, only
the report.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from ..data.importers import ImportResult
from .errors import UserFacing

__all__ = ["ImportJob", "ImportJobs"]

_logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ImportJob:
    """State of one background import."""

    id: int
    source: str  # what the admin asked to import, as typed
    user: str
    done: int = 0
    total: int = 0
    results: tuple[ImportResult, ...] = field(default=())
    error: str | None = None  # why it stopped early (the results so far are kept)
    finished: bool = False


class ImportJobs:
    """Runs one import at a time in a daemon thread and keeps the last one's state."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._job: ImportJob | None = None
        self._thread: threading.Thread | None = None

    def current(self) -> ImportJob | None:
        """The running import, or the last finished one."""
        return self._job

    def start(self, source: str, user: str, run: Callable[[Progress], Iterable[ImportResult]]) -> ImportJob:
        """Start ``run(on_progress)`` in the background.

        Raises:
            UserFacing: another import is still running.
        """
        with self._lock:
            if self._job is not None and not self._job.finished:
                raise UserFacing(f"An import is already running ({self._job.done} of {self._job.total} files). "
                                 "Wait for it to finish.")  # fmt: skip
            job = ImportJob(next(self._ids), source, user)
            self._job = job
            self._thread = threading.Thread(target=self._run, args=(job.id, run), name=f"ila-import-{job.id}",
                                            daemon=True)  # fmt: skip
            self._thread.start()
        return job

    def wait(self, timeout: float | None = None) -> ImportJob | None:
        """Block until the running import ends (tests, shutdown); returns its state."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self._job

    def _update(self, job_id: int, **changes: object) -> None:
        with self._lock:
            if self._job is not None and self._job.id == job_id:
                self._job = replace(self._job, **changes)

    def _run(self, job_id: int, run: Callable[[Progress], Iterable[ImportResult]]) -> None:
        results: list[ImportResult] = []

        def progress(done: int, total: int) -> None:
            self._update(job_id, done=done, total=total, results=tuple(results))

        error = None
        try:
            for result in run(progress):
                results.append(result)
        except Exception as exc:  # the report says where it stopped; the server keeps running
            _logger.exception("background import %d failed", job_id)
            error = str(exc) if isinstance(exc, (ValueError, OSError)) else "unexpected error (see the server log)"
        self._update(job_id, results=tuple(results), error=error, finished=True)
        _logger.info("background import %d finished: %d files", job_id, len(results))
