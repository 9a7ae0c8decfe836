"""SQLite label store: numbered migrations + :class:`LabelStore`, the only code that writes SQL."""

from __future__ import annotations

from .archive import ARCHIVE_ACTIONS, ArchiveResult
from .connection import MIN_SQLITE_VERSION, check_sqlite_version, driver_module_name, immediate
from .errors import (
    JobBusy,
    NothingToUndo,
    NotFound,
    StoreBusy,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreReadOnly,
    UnknownCultivar,
    UnknownImage,
    UnknownJob,
    UnknownVersion,
    WrongThread,
)
from .jobs import LOST_MESSAGE, pid_alive
from .label_store import LabelStore
from .labels import NOT_GIVEN, LabelledItem, LabelResult, replay
from .migrations import migrations
from .paths import DB_NAME, default_store_path
from .queue import QUEUE_SORTS, QueueItem, QueuePage

__all__ = [
    "LabelStore",
    "DB_NAME",
    "default_store_path",
    "LabelResult",
    "ArchiveResult",
    "ARCHIVE_ACTIONS",
    "LabelledItem",
    "QUEUE_SORTS",
    "QueueItem",
    "QueuePage",
    "NOT_GIVEN",
    "replay",
    "migrations",
    "immediate",
    "check_sqlite_version",
    "driver_module_name",
    "MIN_SQLITE_VERSION",
    "LOST_MESSAGE",
    "pid_alive",
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
]
