"""Opening a SQLite connection the way the store needs it, and the ``BEGIN IMMEDIATE`` block.

sqlite-utils imports ``pysqlite3`` instead of the standard ``sqlite3`` when it is installed, which
brings a SQLite newer than the one Python links (3.40.1 on the reference machine is inside the range
of the WAL-reset corruption bug fixed in 3.51.3, see RELIABILITY.md fact 4). We use the same module
so exceptions and connections agree with sqlite-utils.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from sqlite_utils.utils import sqlite3

from ..fsutil import fsync_dir
from .errors import StoreCorrupt, translate_errors

__all__ = [
    "MIN_SQLITE_VERSION",
    "DEFAULT_BUSY_TIMEOUT_MS",
    "connect",
    "create_database",
    "configure",
    "check_sqlite_version",
    "immediate",
    "driver_module_name",
]


_logger = logging.getLogger(__name__)

MIN_SQLITE_VERSION = (3, 51, 3)  # first release without the WAL-reset corruption bug
DEFAULT_BUSY_TIMEOUT_MS = 5000


def driver_module_name() -> str:
    """Name of the DB-API module sqlite-utils picked (``"pysqlite3"`` or ``"sqlite3"``)."""
    return sqlite3.__name__


def _library_version(conn: sqlite3.Connection) -> str:
    # Ask the connection rather than the module: it is the library actually linked.
    return conn.execute("select sqlite_version()").fetchone()[0]


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())


def check_sqlite_version(version: str) -> bool:
    """Log a loud warning if ``version`` is older than :data:`MIN_SQLITE_VERSION`.

    Returns:
        True when the version is new enough.
    """
    if _version_tuple(version) >= MIN_SQLITE_VERSION:
        return True
    _logger.warning(
        "SQLite %s is older than %s and can corrupt WAL databases under concurrent writes; "
        "install pysqlite3 (pip install pysqlite3==0.6.1) so sqlite-utils uses a fixed SQLite",
        version,
        ".".join(map(str, MIN_SQLITE_VERSION)),
    )
    return False


def connect(path: Path | str, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS, quick_check: bool = True) -> Database:
    """Open (or create) a database file, check it, and set the store's PRAGMAs.

    The integrity check runs before anything that writes (``journal_mode=wal`` rewrites the header),
    so a corrupt file is reported and left exactly as it was.

    Args:
        path: database file; its directory must exist.
        busy_timeout_ms: how long a writer waits for the lock before :class:`StoreBusy`.
        quick_check: run ``PRAGMA quick_check`` first (the app does this once at start; per-thread
            opens after that may skip it because it reads the whole file).

    Raises:
        StoreCorrupt: the file is not a valid SQLite database.
        ValueError: ``busy_timeout_ms`` is negative.
    """
    if busy_timeout_ms < 0:
        raise ValueError(f"busy_timeout_ms must be >= 0, got {busy_timeout_ms}")
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"directory {path.parent} does not exist")
    if path.is_file() and path.stat().st_size == 0:
        # SQLite would treat an empty file as a new database and we would migrate it silently;
        # new stores are created whole (LabelStore.open), so an empty one is a truncated one.
        raise StoreCorrupt(f"database corrupt: {path} is empty (0 bytes); restore from backup or delete it")
    with translate_errors("database"):
        # check_same_thread stays True: a cross-thread call fails loudly (WrongThread) instead of
        # racing on one connection. timeout= is the driver's busy handler, same as PRAGMA busy_timeout.
        conn = sqlite3.connect(str(path), timeout=busy_timeout_ms / 1000)
    try:
        with translate_errors("database"):
            if quick_check:
                _quick_check(conn, path)
            db = Database(conn)
            configure(db, busy_timeout_ms=busy_timeout_ms, wal=True)
    except BaseException:
        conn.close()
        raise
    return db


def _quick_check(conn: sqlite3.Connection, path: Path) -> None:
    rows = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
    if rows != ["ok"]:
        raise StoreCorrupt(
            f"database corrupt: {path} fails quick_check ({'; '.join(map(str, rows))}); restore from backup"
        )


def configure(db: Database, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS, wal: bool = True) -> None:
    """Set WAL (file databases only), ``synchronous=FULL``, ``busy_timeout`` and foreign keys."""
    conn = db.conn
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    if wal:
        # enable_wal() refuses inside a transaction and is a no-op when already in WAL.
        db.enable_wal()
    # FULL: a WAL commit survives power loss, not only an application crash (fact 4).
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    check_sqlite_version(_library_version(conn))


@contextmanager
def immediate(db: Database) -> Iterator[Database]:
    """A write transaction that takes the write lock at ``BEGIN``.

    ``db.atomic()`` issues a deferred ``BEGIN``: a read followed by a write can then fail at once
    with ``SQLITE_BUSY`` (the snapshot is stale), ignoring ``busy_timeout``. ``BEGIN IMMEDIATE``
    waits for the lock up front, so every read inside the block sees the state the write commits
    on. Nested use becomes a savepoint.
    """
    conn = db.conn
    if conn.in_transaction:
        with db.atomic():
            yield db
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        # An error such as SQLITE_FULL may already have rolled the transaction back.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise



def create_database(path: Path, *, initialise: Callable[[Database], Any]) -> None:
    """Create a database at ``path`` atomically (it appears whole, ``initialise``-d, or not at all).

    Built under a temporary name and hard-linked into place: ``os.link`` fails if another process
    created the store first, and then we keep theirs (``os.replace`` would swap a live file away).
    """
    if not path.parent.is_dir():
        raise ValueError(f"directory {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.new")
    try:
        with translate_errors("new database"):
            db = Database(tmp)
            try:
                db.execute("PRAGMA synchronous = FULL")
                initialise(db)
            finally:
                db.close()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            _logger.info("store %s was created by another process meanwhile", path)
        except OSError:
            # Filesystems without hard links: a small race remains, accepted there.
            if not path.exists():
                os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


