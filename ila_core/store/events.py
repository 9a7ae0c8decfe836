"""The label event log's low-level pieces: inserting events, reading them back, and replay.

:class:`EventsBase` holds the helpers that the label methods (:mod:`ila_core.store.labels`) and the
image methods share; they run inside or outside an open write transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .base import StoreBase
from .errors import UnknownCultivar, UnknownImage

__all__ = ["EventsBase", "LabelResult", "replay", "EVENT_SELECT"]


@dataclass(frozen=True)
class LabelResult:
    """Outcome of :meth:`LabelsMixin.record_label` / :meth:`LabelsMixin.undo`."""

    event_id: int
    created: bool  # False: this client_event_id was already stored (double submit); nothing new written
    previous: str | None  # label before this event (None: unlabelled, or 'unsure' without a cultivar)
    conflict: bool = False  # expected_current differed from the label actually replaced; event still stored
    current: str | None = None  # label after this event


def replay(events: Iterable[dict[str, Any]]) -> dict[int, int]:
    """Recompute the effective event per image from the raw log, in id order.

    Args:
        events: rows with ``id``, ``image_id`` and ``kind``.

    Returns:
        image id -> id of the event whose label is current; cleared images are absent.
    """
    stacks: dict[int, list[int]] = {}
    for event in sorted(events, key=lambda e: e["id"]):
        stack = stacks.setdefault(event["image_id"], [])
        if event["kind"] == "undo":
            if stack:
                stack.pop()
        else:
            stack.append(event["id"])
    return {image_id: stack[-1] for image_id, stack in stacks.items() if stack}


EVENT_SELECT = """
SELECT e.id, e.client_event_id, e.image_id, e.kind, c.name AS label, a.name AS alt_label,
       e.replaces_event_id, e.restores_event_id, e.user, e.source, e.note, e.created_at
FROM label_events e
LEFT JOIN cultivars c ON c.id = e.cultivar_id
LEFT JOIN cultivars a ON a.id = e.alt_cultivar_id
"""


class EventsBase(StoreBase):
    """Row-level helpers over ``label_events``, ``current_labels``, ``images`` and ``cultivars``."""

    def _require_image(self, image_id: int) -> None:
        if self._scalar("SELECT 1 FROM images WHERE id = ?", [image_id]) is None:
            raise UnknownImage(f"unknown image id {image_id!r}")

    def _cultivar_id(self, name: str, *, create: bool) -> int:
        found = self._scalar("SELECT id FROM cultivars WHERE name = ?", [name])
        if found is not None:
            return int(found)
        if not create:
            raise UnknownCultivar(f"unknown cultivar {name!r}")
        cursor = self._exec("INSERT INTO cultivars (name, created_at) VALUES (?, ?)", [name, self._now()])
        return int(cursor.lastrowid)

    def _event(self, event_id: int) -> dict[str, Any] | None:
        return self._row(f"{EVENT_SELECT} WHERE e.id = ?", [event_id])

    def _current_event(self, image_id: int) -> dict[str, Any] | None:
        sql = f"{EVENT_SELECT} JOIN current_labels cl ON cl.event_id = e.id WHERE cl.image_id = ?"
        return self._row(sql, [image_id])

    def _duplicate(
        self, client_event_id: str, image_id: int, kind: str, label: str | None, alt_label: str | None
    ) -> LabelResult | None:
        row = self._row(f"{EVENT_SELECT} WHERE e.client_event_id = ?", [client_event_id])
        if row is None:
            return None
        if (row["image_id"], row["kind"], row["label"], row["alt_label"]) != (image_id, kind, label, alt_label):
            raise ValueError(
                f"client_event_id {client_event_id!r} was already used for a different correction "
                f"(event {row['id']}); use a new id per submit"
            )
        replaced = self._event(row["replaces_event_id"]) if row["replaces_event_id"] else None
        if kind == "undo":
            restored = self._event(row["restores_event_id"]) if row["restores_event_id"] else None
            current = restored["label"] if restored else None
        else:
            current = label
        return LabelResult(int(row["id"]), False, replaced["label"] if replaced else None, False, current)

    def _insert_event(
        self,
        client_event_id: str,
        image_id: int,
        kind: str,
        cultivar_id: int | None,
        alt_cultivar_id: int | None,
        replaces_event_id: int | None,
        restores_event_id: int | None,
        user: str | None,
        source: str,
        note: str | None,
    ) -> int:
        cursor = self._exec(
            """INSERT INTO label_events (client_event_id, image_id, kind, cultivar_id, alt_cultivar_id,
                   replaces_event_id, restores_event_id, user, source, note, created_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            [client_event_id, image_id, kind, cultivar_id, alt_cultivar_id, replaces_event_id, restores_event_id,
             user, source, note, self._now()],
        )
        return int(cursor.lastrowid)

