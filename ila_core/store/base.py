"""Shared plumbing of :class:`~ila_core.store.label_store.LabelStore` and its mixins.

Every public store method reads through :meth:`StoreBase._rows` / :meth:`StoreBase._row` or writes
inside :meth:`StoreBase._write` (``BEGIN IMMEDIATE`` ... ``COMMIT``); both translate driver errors
into the :class:`~ila_core.store.errors.StoreError` family.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from sqlite_utils import Database

from .connection import immediate
from .errors import translate_errors

__all__ = ["Clock", "StoreBase", "load_json_columns", "utc_now"]

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


class StoreBase:
    """Holds the connection and the clock; the mixins add the domain methods."""

    def __init__(self, db: Database, *, clock: Clock | None = None) -> None:
        self.db = db
        self._clock = clock or utc_now

    def _now(self) -> str:
        """UTC ISO-8601 timestamp for ``created_at`` columns (display only; order is by id)."""
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the store clock must return timezone-aware datetimes")
        return now.astimezone(timezone.utc).isoformat(timespec="milliseconds")

    @contextmanager
    def _write(self, what: str = "change") -> Iterator[Database]:
        """One ``BEGIN IMMEDIATE`` transaction; errors leave nothing written."""
        with translate_errors(what), immediate(self.db):
            yield self.db

    @contextmanager
    def batch(self, what: str = "batch") -> Iterator[None]:
        """One transaction around several store calls (each becomes a savepoint): one commit, one fsync.

        Everything inside is acknowledged together when the block exits; an error rolls all of it back.
        """
        with self._write(what):
            yield

    def _rows(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        with translate_errors("read"):
            return list(self.db.query(sql, params))

    def _row(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> dict[str, Any] | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _scalar(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        with translate_errors("read"):
            row = self.db.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def _exec(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        """Execute a write inside an open ``_write`` block; returns the cursor."""
        return self.db.execute(sql, params)


def load_json_columns(row: dict[str, Any] | None, *names: str) -> dict[str, Any] | None:
    """Parse JSON text columns of a row in place (``None`` stays ``None``)."""
    if row is None:
        return None
    for name in names:
        if row.get(name) is not None:
            row[name] = json.loads(row[name])
    return row
