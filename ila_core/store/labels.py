"""Label events: corrections, undo, bulk labels, snapshots for training.

The label state of an image is a stack. ``label`` / ``unsure`` / ``between`` events push, ``undo``
pops (a new event, the old ones stay). Each event stores the one it replaced, so the state at any
past event id is a single join (:meth:`LabelsMixin.labelled_items` with ``max_event_id``) and
:func:`replay` can recompute the derived ``current_labels`` table from the log alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from .errors import NothingToUndo
from .events import EVENT_SELECT, EventsBase, LabelResult, replay
from .validation import SOURCES, check_label, check_optional, check_split, check_text, check_user

__all__ = ["LabelResult", "LabelledItem", "LabelsMixin", "replay", "NOT_GIVEN", "KINDS"]

KINDS = ("label", "unsure", "between")


class _NotGiven:
    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Final = _NotGiven()  # expected_current default: None is a real expectation ("unlabelled")


@dataclass(frozen=True)
class LabelledItem:
    """One hard-labelled image of a training snapshot."""

    image_id: int
    sha256: str
    rel_path: str
    label: str
    split: str | None


class LabelsMixin(EventsBase):
    """Methods over ``label_events`` and ``current_labels``."""

    def record_label(
        self,
        image_id: int,
        label: str | None,
        *,
        client_event_id: str,
        user: str | None = None,
        source: str = "expert",
        kind: str = "label",
        alt_label: str | None = None,
        note: str | None = None,
        expected_current: str | None | _NotGiven = NOT_GIVEN,
        allow_new_cultivar: bool = True,
    ) -> LabelResult:
        """Append one label event; the current label follows in the same transaction.

        Args:
            image_id: the image being labelled.
            label: cultivar name; may be None only for ``kind="unsure"``.
            client_event_id: id chosen by the client per submit; resubmitting it stores nothing new.
            user: who labelled.
            source: 'expert', 'import', 'model-accepted' or 'bulk'.
            kind: 'label' (a hard label), 'unsure', or 'between' (needs ``alt_label``).
            alt_label: the second cultivar of a 'between' event.
            note: free text.
            expected_current: the label the user saw; a different label at commit time sets ``conflict``.
            allow_new_cultivar: False refuses names that are not yet cultivars (UnknownCultivar).

        Raises:
            ValueError: bad arguments, or a client_event_id reused for a different correction.
            UnknownImage, UnknownCultivar, StoreBusy, StoreFull: see :mod:`ila_core.store.errors`.
        """
        client_event_id = check_text(client_event_id, "client_event_id", max_chars=200)
        if kind not in KINDS:
            raise ValueError(f"unknown label kind {kind!r} (expected one of {', '.join(KINDS)})")
        if source not in SOURCES:
            raise ValueError(f"unknown label source {source!r} (expected one of {', '.join(SOURCES)})")
        if label is not None or kind != "unsure":
            label = check_label(label)
        if kind == "between":
            alt_label = check_label(alt_label)
        elif alt_label is not None:
            raise ValueError(f"alt_label is only for kind='between', not {kind!r}")
        user, note = check_user(user), check_optional(note, "note", 2000, allow_newlines=True)
        with self._write("correction"):
            duplicate = self._duplicate(client_event_id, image_id, kind, label, alt_label)
            if duplicate is not None:
                return duplicate
            self._require_image(image_id)
            cultivar_id = None if label is None else self._cultivar_id(label, create=allow_new_cultivar)
            alt_id = None if alt_label is None else self._cultivar_id(alt_label, create=allow_new_cultivar)
            current = self._current_event(image_id)
            event_id = self._insert_event(
                client_event_id, image_id, kind, cultivar_id, alt_id, current and current["id"], None,
                user, source, note,
            )
        previous = current["label"] if current else None
        conflict = expected_current is not NOT_GIVEN and expected_current != previous
        return LabelResult(event_id, True, previous, conflict, label)

    def bulk_label(
        self,
        image_ids: Sequence[int],
        label: str,
        *,
        client_event_id: str,
        user: str | None = None,
        source: str = "bulk",
        note: str | None = None,
    ) -> list[int]:
        """Give many images the same hard label in one transaction (all or nothing).

        Each image's event gets the client id ``f"{client_event_id}/{image_id}"``, so resubmitting the
        same bulk action returns the stored event ids without writing.

        Returns:
            One event id per distinct image, in the order given.
        """
        client_event_id = check_text(client_event_id, "client_event_id", max_chars=180)
        label, user = check_label(label), check_user(user)
        note = check_optional(note, "note", 2000, allow_newlines=True)
        if source not in SOURCES:
            raise ValueError(f"unknown label source {source!r} (expected one of {', '.join(SOURCES)})")
        ids = list(dict.fromkeys(int(i) for i in image_ids))
        if not ids:
            raise ValueError("bulk_label needs at least one image id")
        out: list[int] = []
        with self._write("bulk correction"):
            cultivar_id = self._cultivar_id(label, create=True)
            for image_id in ids:
                cid = f"{client_event_id}/{image_id}"
                duplicate = self._duplicate(cid, image_id, "label", label, None)
                if duplicate is not None:
                    out.append(duplicate.event_id)
                    continue
                self._require_image(image_id)
                current = self._current_event(image_id)
                out.append(
                    self._insert_event(
                        cid, image_id, "label", cultivar_id, None, current and current["id"], None, user, source, note
                    )
                )
        return out

    def undo(
        self, image_id: int, *, client_event_id: str, user: str | None = None, note: str | None = None
    ) -> LabelResult:
        """Append an 'undo' event that restores the label before the current one (or clears it).

        Raises:
            NothingToUndo: the image has no current label event.
        """
        client_event_id = check_text(client_event_id, "client_event_id", max_chars=200)
        user, note = check_user(user), check_optional(note, "note", 2000, allow_newlines=True)
        with self._write("undo"):
            duplicate = self._duplicate(client_event_id, image_id, "undo", None, None)
            if duplicate is not None:
                return duplicate
            self._require_image(image_id)
            current = self._current_event(image_id)
            if current is None:
                raise NothingToUndo(f"nothing to undo for image {image_id}")
            restored_id = current["replaces_event_id"]
            restored = self._event(restored_id) if restored_id is not None else None
            event_id = self._insert_event(
                client_event_id, image_id, "undo", None, None, current["id"], restored_id, user, "expert", note
            )
        return LabelResult(event_id, True, current["label"], False, restored["label"] if restored else None)

    def current_label(self, image_id: int) -> dict[str, Any] | None:
        """The image's current label event, or None when it has none (never labelled, or undone to empty).

        Keys: ``id`` (the event id), ``kind``, ``label``, ``alt_label``, ``user``, ``source``, ``note``,
        ``created_at``, ``client_event_id``, ``replaces_event_id``, ``restores_event_id``, ``image_id``.
        """
        self._require_image(image_id)
        return self._current_event(image_id)

    def label_event(self, client_event_id: str) -> dict[str, Any] | None:
        """The event stored under ``client_event_id``, or None: lets an importer tell what it already stored."""
        cid = check_text(client_event_id, "client_event_id", max_chars=200)
        return self._row(f"{EVENT_SELECT} WHERE e.client_event_id = ?", [cid])

    def label_history(self, image_id: int | None = None, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Label events in commit (id) order, for one image or all; ``limit`` keeps the newest ones."""
        if image_id is not None:
            self._require_image(image_id)
        where, params = ("WHERE e.image_id = ?", [image_id]) if image_id is not None else ("", [])
        if limit is None:
            return self._rows(f"{EVENT_SELECT} {where} ORDER BY e.id", params)
        rows = self._rows(f"{EVENT_SELECT} {where} ORDER BY e.id DESC LIMIT ?", [*params, int(limit)])
        return rows[::-1]

    def last_event_id(self) -> int:
        """Highest label event id (0 when there are none); a training job's data snapshot."""
        return int(self._scalar("SELECT COALESCE(MAX(id), 0) FROM label_events"))

    def labelled_items(self, *, split: str | None = None, max_event_id: int | None = None) -> list[LabelledItem]:
        """Hard-labelled images as of ``max_event_id`` (default: now), ordered by image id.

        Only kind 'label' counts; 'unsure' and 'between' images are left out, and so are archived images
        (archived now: the archive log is not cut at the snapshot). ``split=None`` means every split
        (including unassigned images); ``"pool"`` means unassigned only.
        """
        if split is None:
            split_sql, params = "", []
        elif check_split(split) is None:
            split_sql, params = "AND i.split IS NULL", []
        else:
            split_sql, params = "AND i.split = ?", [split]
        limit = max_event_id if max_event_id is not None else 2**62  # no cut: the state now
        rows = self._rows(
            f"""
            WITH last AS (SELECT image_id, MAX(id) AS id FROM label_events WHERE id <= ? GROUP BY image_id)
            SELECT i.id AS image_id, i.sha256, i.rel_path, c.name AS label, i.split
            FROM last
            JOIN label_events e ON e.id = last.id
            JOIN label_events eff ON eff.id = CASE WHEN e.kind = 'undo' THEN e.restores_event_id ELSE e.id END
            JOIN cultivars c ON c.id = eff.cultivar_id
            JOIN images i ON i.id = last.image_id
            WHERE eff.kind = 'label' AND i.id NOT IN (SELECT image_id FROM archived_images) {split_sql}
            ORDER BY i.id
            """,
            [int(limit), *params],
        )
        return [LabelledItem(**row) for row in rows]

    def label_counts(self, *, split: str | None = None) -> dict[str, int]:
        """Current hard labels per cultivar name (only cultivars with at least one image; archived left out)."""
        counts: dict[str, int] = {}
        for (name, image_split), n in self.label_counts_by_split().items():
            if split is None or image_split == (None if check_split(split) is None else split):
                counts[name] = counts.get(name, 0) + n
        return counts

    def label_counts_by_split(self) -> dict[tuple[str, str | None], int]:
        """Current hard labels per (cultivar name, split) in one ``GROUP BY`` (split None = unassigned)."""
        rows = self._rows(
            """SELECT c.name AS name, i.split AS split, COUNT(*) AS n
               FROM current_labels cl
               JOIN label_events e ON e.id = cl.event_id
               JOIN cultivars c ON c.id = e.cultivar_id
               JOIN images i ON i.id = cl.image_id
               LEFT JOIN archived_images ar ON ar.image_id = cl.image_id
               WHERE e.kind = 'label' AND ar.image_id IS NULL
               GROUP BY c.name, i.split"""
        )
        return {(r["name"], r["split"]): int(r["n"]) for r in rows}

    def replay_current_labels(self) -> dict[int, int]:
        """Effective event per image recomputed from ``label_events`` alone (see :func:`replay`)."""
        return replay(self._rows("SELECT id, image_id, kind FROM label_events ORDER BY id"))

    def derived_current_labels(self) -> dict[int, int]:
        """The ``current_labels`` table as image id -> event id; must equal :meth:`replay_current_labels`."""
        return {r["image_id"]: r["event_id"] for r in self._rows("SELECT image_id, event_id FROM current_labels")}
