"""``LabelStore``: the only code that writes SQL (images, cultivars; labels, versions, jobs via mixins).

One store = one ``sqlite_utils.Database`` = one thread. Open a store per thread or per request with
:meth:`LabelStore.open`; the connection keeps Python's ``check_same_thread`` so a store shared across
threads fails at once with :class:`~ila_core.store.errors.WrongThread` instead of corrupting state.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlite_utils import Database

from .archive import ArchiveMixin
from .base import Clock, load_json_columns
from .connection import DEFAULT_BUSY_TIMEOUT_MS, configure, connect, create_database
from .errors import UnknownCultivar, UnknownImage, translate_errors
from .jobs import JobsMixin
from .labels import LabelsMixin
from .migrations import apply_migrations
from .validation import (
    check_label,
    check_rel_path,
    check_sha256,
    check_split,
    check_text,
    check_user,
    clean_original_name,
    dump_json,
)
from .versions import VersionsMixin

__all__ = ["LabelStore"]

_logger = logging.getLogger(__name__)

_IMAGE_SELECT = """
SELECT i.*, c.name AS label, e.kind AS label_kind, ar.image_id IS NOT NULL AS archived
FROM images i
LEFT JOIN archived_images ar ON ar.image_id = i.id
LEFT JOIN current_labels cl ON cl.image_id = i.id
LEFT JOIN label_events e ON e.id = cl.event_id
LEFT JOIN cultivars c ON c.id = e.cultivar_id
"""


class LabelStore(LabelsMixin, ArchiveMixin, VersionsMixin, JobsMixin):
    """Images, cultivars, append-only label and archive events, model versions, predictions and jobs.

    Attributes:
        db: the ``sqlite_utils.Database`` (use it for reads in tests; writes go through methods).
        path: the database file, or None for an in-memory store.
    """

    def __init__(self, db: Database, *, path: Path | None = None, clock: Clock | None = None) -> None:
        super().__init__(db, clock=clock)
        self.path = path

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        quick_check: bool = True,
        clock: Clock | None = None,
    ) -> LabelStore:
        """Open (creating if needed) the store at ``path``: check, set PRAGMAs, apply migrations.

        Args:
            path: the SQLite file, e.g. ``data/ila.db``.
            busy_timeout_ms: how long a write waits for another writer before StoreBusy.
            quick_check: run ``PRAGMA quick_check`` first; skip it for per-request opens after start-up.
            clock: returns aware UTC datetimes (tests inject one).

        Raises:
            StoreCorrupt: the file fails the check; it is not modified.
        """
        path = Path(path)
        if not path.exists():
            create_database(path, initialise=apply_migrations)
        db = connect(path, busy_timeout_ms=busy_timeout_ms, quick_check=quick_check)
        try:
            with translate_errors("schema migration"):
                applied = apply_migrations(db)
        except BaseException:
            db.close()
            raise
        if applied:
            _logger.info("store %s: applied migrations %s", path, ", ".join(applied))
        return cls(db, path=path, clock=clock)

    @classmethod
    def in_memory(cls, *, clock: Clock | None = None) -> LabelStore:
        """A private in-memory store with the full schema (tests)."""
        db = Database(memory=True)
        configure(db, wal=False)
        apply_migrations(db)
        return cls(db, clock=clock)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self.db.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check`` result: ``"ok"`` or the problems joined by newlines."""
        with translate_errors("read"):
            rows = [row[0] for row in self.db.execute("PRAGMA integrity_check")]
        return "\n".join(map(str, rows))

    # -- images ------------------------------------------------------------------------------

    def add_image(
        self,
        *,
        sha256: str,
        rel_path: str,
        width: int,
        height: int,
        fmt: str,
        original_name: str | None = None,
        metadata: dict[str, Any] | None = None,
        split: str | None = None,
        user: str | None = None,
    ) -> tuple[int, bool]:
        """Register a stored image by content hash.

        Args:
            sha256: hex digest of the stored file (the dedupe key).
            rel_path: stored file path relative to the data directory.
            width: pixels.
            height: pixels.
            fmt: image format, e.g. "JPEG".
            original_name: uploader's file name; kept as HTML-escaped display metadata only.
            metadata: free JSON (plot, accession, growth_stage, ...).
            split: 'train', 'holdout' or None (unassigned pool).
            user: uploader.

        Returns:
            ``(image_id, created)``; an already known sha256 returns ``(existing_id, False)`` unchanged.
        """
        sha256, rel_path = check_sha256(sha256), check_rel_path(rel_path)
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            raise ValueError(f"width and height must be positive integers, got {width!r} x {height!r}")
        fmt = check_text(fmt, "fmt", max_chars=20)
        split, user = check_split(split, allow_pool=False), check_user(user)
        if metadata is not None and not isinstance(metadata, dict):
            raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}")
        metadata_json = dump_json(metadata or {}, "metadata")
        stored = (metadata or {}).get("stored_sha256")
        stored = check_sha256(stored) if stored is not None else None
        with self._write("image"):
            existing = self._scalar("SELECT id FROM images WHERE sha256 = ?", [sha256])
            if existing is not None:
                return int(existing), False
            cursor = self._exec(
                """INSERT INTO images (sha256, rel_path, width, height, format, original_name, metadata, split,
                       created_at, uploaded_by, stored_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [sha256, rel_path, width, height, fmt, clean_original_name(original_name), metadata_json, split,
                 self._now(), user, stored],
            )
            return int(cursor.lastrowid), True

    def image(self, image_id: int) -> dict[str, Any]:
        """One image row (``metadata`` parsed, plus current ``label`` and ``label_kind``)."""
        row = self._row(f"{_IMAGE_SELECT} WHERE i.id = ?", [image_id])
        if row is None:
            raise UnknownImage(f"unknown image id {image_id!r}")
        return load_json_columns(row, "metadata")

    def image_by_sha256(self, sha256: str) -> dict[str, Any] | None:
        """The image with this content hash, or None."""
        row = self._row(f"{_IMAGE_SELECT} WHERE i.sha256 = ?", [check_sha256(sha256)])
        return load_json_columns(row, "metadata")

    def image_by_content(self, sha256: str) -> dict[str, Any] | None:
        """The image whose original bytes or stored copy (``metadata.stored_sha256``) have this hash, or None.

        Both lookups go through an index (the unique one on ``sha256``, ``images_stored_sha256``), so an
        import checks each file without reading the table.
        """
        sha256 = check_sha256(sha256)
        # The id first, through the two indexes: most lookups of an import miss, and the full row costs 5 joins.
        image_id = self._scalar("SELECT id FROM images WHERE sha256 = ?", [sha256])
        if image_id is None:
            image_id = self._scalar("SELECT MIN(id) FROM images WHERE stored_sha256 = ?", [sha256])
        return None if image_id is None else self.image(int(image_id))

    def images(
        self,
        *,
        split: str | None = None,
        cultivar: str | None = None,
        labelled: bool | None = None,
        limit: int | None = None,
        offset: int = 0,
        archived: bool | None = False,
    ) -> list[dict[str, Any]]:
        """Images in id order, filtered.

        Args:
            split: 'train', 'holdout', 'pool' (unassigned) or None (all).
            cultivar: only images whose current hard label is this cultivar (UnknownCultivar if none such).
            labelled: True = has a current hard label ('label' kind); False = not (pool, unsure, between).
            limit: page size.
            offset: page start.
            archived: False (default) leaves archived images out, True lists only them, None lists all.
        """
        where, params = self._image_filter(split, cultivar, labelled, archived)
        page = ""
        if limit is not None:
            page, params = " LIMIT ? OFFSET ?", [*params, int(limit), int(offset)]
        elif offset:
            page, params = " LIMIT -1 OFFSET ?", [*params, int(offset)]
        rows = self._rows(f"{_IMAGE_SELECT} {where} ORDER BY i.id{page}", params)
        return [load_json_columns(row, "metadata") for row in rows]

    def images_since(self, after_id: int, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Images with ``id > after_id`` in id order (a watermark walk for background work; archived ones left out)."""
        page, params = ("", [int(after_id)]) if limit is None else (" LIMIT ?", [int(after_id), int(limit)])
        rows = self._rows(f"{_IMAGE_SELECT} WHERE i.id > ? AND ar.image_id IS NULL ORDER BY i.id{page}", params)
        return [load_json_columns(row, "metadata") for row in rows]

    def count_images(
        self, *, split: str | None = None, cultivar: str | None = None, labelled: bool | None = None,
        archived: bool | None = False,
    ) -> int:  # fmt: skip
        """Number of images matching the same filters as :meth:`images`."""
        where, params = self._image_filter(split, cultivar, labelled, archived)
        return int(self._scalar(f"SELECT COUNT(*) FROM ({_IMAGE_SELECT} {where})", params))

    def set_split(self, image_ids: Sequence[int], split: str | None) -> int:
        """Assign images to 'train', 'holdout' or back to the pool (None); all or nothing.

        Returns:
            Number of images updated.
        """
        split = check_split(split)
        ids = list(dict.fromkeys(int(i) for i in image_ids))
        with self._write("split change"):
            for image_id in ids:
                self._require_image(image_id)
            for image_id in ids:
                self._exec("UPDATE images SET split = ? WHERE id = ?", [split, image_id])
        return len(ids)

    def _image_filter(self, split: str | None, cultivar: str | None, labelled: bool | None,
                      archived: bool | None = False) -> tuple[str, list[Any]]:  # fmt: skip
        clauses: list[str] = []
        params: list[Any] = []
        if archived is not None:
            clauses.append("ar.image_id IS NOT NULL" if archived else "ar.image_id IS NULL")
        if split is not None:
            if check_split(split) is None:
                clauses.append("i.split IS NULL")
            else:
                clauses.append("i.split = ?")
                params.append(split)
        if cultivar is not None:
            if self._scalar("SELECT 1 FROM cultivars WHERE name = ?", [check_label(cultivar)]) is None:
                raise UnknownCultivar(f"unknown cultivar {cultivar!r}")
            clauses.append("e.kind = 'label' AND c.name = ?")
            params.append(cultivar)
        if labelled is True:
            clauses.append("e.kind = 'label'")
        elif labelled is False:
            clauses.append("(e.kind IS NULL OR e.kind != 'label')")
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", params

    # -- cultivars ---------------------------------------------------------------------------

    def add_cultivar(self, name: str) -> int:
        """Create a cultivar (or return the existing id for this exact name)."""
        name = check_label(name)
        with self._write("cultivar"):
            return self._cultivar_id(name, create=True)

    def cultivars(self) -> list[str]:
        """Cultivar names in creation (id) order, so class indices derived from it stay stable."""
        return [row["name"] for row in self._rows("SELECT name FROM cultivars ORDER BY id")]

