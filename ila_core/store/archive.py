"""Archiving images: an append-only log of ``archive`` / ``restore`` / ``delete`` events per image.

An archived image stays in the store (its label history refers to it) but leaves the queues, training
snapshots and label exports; a ``restore`` event brings it back, so archiving is undoable the same way a label
is. ``delete`` (admins, through the app) means the image file itself was removed for good: the row and its
history stay, and such an image cannot be restored. ``archived_images`` is derived from the log by triggers,
like ``current_labels`` is from ``label_events``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .events import EventsBase
from .validation import check_optional, check_text, check_user

__all__ = ["ARCHIVE_ACTIONS", "ArchiveMixin", "ArchiveResult"]

ARCHIVE_ACTIONS = ("archive", "restore", "delete")

_EVENT_SELECT = "SELECT id, client_event_id, image_id, action, user, note, created_at FROM image_events"


@dataclass(frozen=True)
class ArchiveResult:
    """Outcome of :meth:`ArchiveMixin.archive_image` and friends."""

    event_id: int
    created: bool  # False: this client_event_id was already stored, or the image was already in that state
    archived: bool  # the image is archived after this call
    deleted: bool  # its file was deleted for good


class ArchiveMixin(EventsBase):
    """Methods over ``image_events`` and ``archived_images``."""

    def archive_image(self, image_id: int, *, client_event_id: str, user: str | None = None,
                      note: str | None = None) -> ArchiveResult:  # fmt: skip
        """Hide an image from queues, training and exports (a new event; :meth:`restore_image` undoes it)."""
        return self._image_event(image_id, "archive", client_event_id, user, note)

    def restore_image(self, image_id: int, *, client_event_id: str, user: str | None = None,
                      note: str | None = None) -> ArchiveResult:  # fmt: skip
        """Bring an archived image back.

        Raises:
            ValueError: the image's file was deleted for good.
        """
        return self._image_event(image_id, "restore", client_event_id, user, note)

    def mark_deleted(self, image_id: int, *, client_event_id: str, user: str | None = None,
                     note: str | None = None) -> ArchiveResult:  # fmt: skip
        """Record that the image's file was removed for good (the caller removes the file after this commits)."""
        return self._image_event(image_id, "delete", client_event_id, user, note)

    def archive_state(self, image_id: int) -> dict[str, Any] | None:
        """``{"event_id", "deleted", "user", "created_at"}`` of an archived image, or None when it is not archived."""
        self._require_image(image_id)
        return self._row(
            """SELECT a.event_id, a.deleted, e.user, e.created_at FROM archived_images a
               JOIN image_events e ON e.id = a.event_id WHERE a.image_id = ?""",
            [image_id],
        )

    def archived_ids(self) -> set[int]:
        """Ids of every archived (or deleted) image."""
        return {int(r["image_id"]) for r in self._rows("SELECT image_id FROM archived_images")}

    def image_events(self, image_id: int | None = None) -> list[dict[str, Any]]:
        """Archive events in id order, for one image or all."""
        if image_id is None:
            return self._rows(f"{_EVENT_SELECT} ORDER BY id")
        return self._rows(f"{_EVENT_SELECT} WHERE image_id = ? ORDER BY id", [image_id])

    def _image_event(self, image_id: int, action: str, client_event_id: str, user: str | None,
                     note: str | None) -> ArchiveResult:  # fmt: skip
        client_event_id = check_text(client_event_id, "client_event_id", max_chars=200)
        user, note = check_user(user), check_optional(note, "note", 2000, allow_newlines=True)
        with self._write(action):
            row = self._row(f"{_EVENT_SELECT} WHERE client_event_id = ?", [client_event_id])
            if row is not None:
                if (row["image_id"], row["action"]) != (image_id, action):
                    raise ValueError(f"client_event_id {client_event_id!r} was already used for another action")
                return self._archive_result(int(row["id"]), image_id, created=False)
            self._require_image(image_id)
            state = self._row("SELECT event_id, deleted FROM archived_images WHERE image_id = ?", [image_id])
            if state is not None and state["deleted"] and action != "delete":
                raise ValueError(f"image {image_id}'s file was deleted for good; it cannot be {action}d")
            if (action == "archive" and state is not None) or (action == "restore" and state is None):
                return self._archive_result(int(state["event_id"]) if state else 0, image_id, created=False)
            cursor = self._exec(
                "INSERT INTO image_events (client_event_id, image_id, action, user, note, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [client_event_id, image_id, action, user, note, self._now()],
            )
            return self._archive_result(int(cursor.lastrowid), image_id, created=True)

    def _archive_result(self, event_id: int, image_id: int, *, created: bool) -> ArchiveResult:
        state = self._row("SELECT deleted FROM archived_images WHERE image_id = ?", [image_id])
        return ArchiveResult(event_id, created, state is not None, bool(state and state["deleted"]))
