"""The label store's exception family and the one place that turns SQLite errors into it.

Callers (UI handlers, the training worker) catch :class:`StoreError` and show its message; the
messages are written for the person at the browser ("database busy, please retry"). Lookups of ids
that do not exist also subclass :class:`ValueError`, because the caller passed a bad argument.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from sqlite_utils.utils import sqlite3

__all__ = [
    "StoreError",
    "NotFound",
    "UnknownImage",
    "UnknownCultivar",
    "UnknownJob",
    "UnknownVersion",
    "JobBusy",
    "NothingToUndo",
    "StoreBusy",
    "StoreFull",
    "StoreCorrupt",
    "StoreReadOnly",
    "WrongThread",
    "translate_errors",
]

_logger = logging.getLogger(__name__)

# Primary result codes (the low byte of an extended code), from sqlite3.h.
_SQLITE_IOERR = 10
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_READONLY = 8
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26


class StoreError(RuntimeError):
    """Base class of every error the label store raises on purpose."""


class NotFound(StoreError, ValueError):
    """An id or name that is not in the store."""


class UnknownImage(NotFound):
    """No image with this id (or sha256)."""


class UnknownCultivar(NotFound):
    """No cultivar with this name."""


class UnknownJob(NotFound):
    """No job with this id."""


class UnknownVersion(NotFound):
    """No model version with this id."""


class JobBusy(StoreError):
    """A job is already queued or running; only one runs at a time."""

    def __init__(self, message: str, job_id: int) -> None:
        super().__init__(message)
        self.job_id = job_id


class NothingToUndo(StoreError, ValueError):
    """Undo asked for an image that has no current label event."""


class StoreBusy(StoreError):
    """Another connection held the write lock for longer than ``busy_timeout``."""


class StoreFull(StoreError):
    """The disk (or ``max_page_count``) is full; the change was rolled back."""


class StoreCorrupt(StoreError):
    """The database file fails SQLite's checks; it is left untouched for a restore."""


class StoreReadOnly(StoreError):
    """The database file or its directory is not writable."""


class WrongThread(StoreError):
    """A ``LabelStore`` was used from a thread other than the one that opened it."""


def _primary_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _classify(exc: sqlite3.Error, what: str) -> StoreError:
    """Map one driver error to the store's family (message aimed at the user)."""
    code = _primary_code(exc)
    text = str(exc)
    if isinstance(exc, sqlite3.ProgrammingError) and "same thread" in text:
        return WrongThread(
            "this LabelStore belongs to another thread; open one per thread with LabelStore.open(path)"
        )
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED) or "database is locked" in text:
        return StoreBusy("database busy, please retry")
    if code == _SQLITE_FULL or "disk is full" in text:
        return StoreFull(f"storage full, {what} not saved")
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "malformed" in text or "not a database" in text:
        return StoreCorrupt(f"database corrupt: {text}; restore from backup")
    if code == _SQLITE_READONLY or "readonly" in text:
        return StoreReadOnly(f"database is read-only, {what} not saved: {text}")
    if code == _SQLITE_IOERR:
        return StoreError(f"disk I/O error, {what} not saved: {text}")
    if isinstance(exc, sqlite3.IntegrityError):
        return StoreError(f"{what} refused by the database: {text}")
    return StoreError(f"database error, {what} not saved: {text}")


@contextmanager
def translate_errors(what: str = "change") -> Iterator[None]:
    """Re-raise SQLite driver errors inside the block as :class:`StoreError` subclasses.

    Args:
        what: noun for the user-facing message, e.g. ``"correction"`` -> "storage full, correction not saved".
    """
    try:
        yield
    except sqlite3.Error as exc:
        err = _classify(exc, what)
        _logger.warning("%s (%s: %s)", err, type(exc).__name__, exc)
        raise err from exc
