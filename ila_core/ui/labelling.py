"""Label actions shared by the Classify and Review tabs and the API: confirm, correct, unsure, undo, bulk.

Each action is one append-only event with a client-chosen id, so a retried submit stores nothing twice.
Corrections must name a known cultivar (new cultivars are added on purpose, by an admin, in the Data tab);
the message returned is plain text for the UI.
"""

from __future__ import annotations

import html
import uuid
from dataclasses import dataclass
from typing import Any

from ..store import NOT_GIVEN, LabelStore, UnknownCultivar
from .errors import UserFacing

__all__ = ["LabelOutcome", "bulk_relabel", "image_label", "new_event_id", "record", "undo"]

KIND_TITLES = {"label": "label", "unsure": "unsure", "between": "between"}


@dataclass(frozen=True)
class LabelOutcome:
    """What a label action did."""

    image_id: int
    event_id: int
    created: bool  # False: the same client_event_id was already stored
    previous: str | None
    current: str | None
    conflict: bool  # the label changed since the user looked at it
    message: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict for API answers."""
        return {
            "image_id": self.image_id, "event_id": self.event_id, "created": self.created, "previous": self.previous,
            "current": self.current, "conflict": self.conflict, "message": self.message,
        }  # fmt: skip


def new_event_id(prefix: str = "ui") -> str:
    """A fresh client event id (one per click or API call that did not bring its own)."""
    return f"{prefix}:{uuid.uuid4().hex}"


def image_label(store: LabelStore, image_id: int) -> str | None:
    """The image's current label as shown in the UI: a cultivar, "unsure", or None."""
    current = store.current_label(int(image_id))
    if current is None:
        return None
    if current["kind"] == "unsure":
        return "unsure"
    return current["label"]


def _check_cultivar(store: LabelStore, label: Any) -> str:
    if not isinstance(label, str) or not label.strip():
        raise UserFacing("Choose a cultivar first.")
    if label not in store.cultivars():
        raise UnknownCultivar("unknown cultivar; pick one from the list (admins add new cultivars in the Data tab)")
    return label


def record(
    store: LabelStore,
    image_id: int,
    *,
    kind: str,
    label: str | None,
    user: str,
    client_event_id: str | None = None,
    source: str = "expert",
    expected: str | None | object = NOT_GIVEN,
) -> LabelOutcome:
    """Store one 'label' or 'unsure' event for an image.

    Args:
        store: an open store.
        image_id: the image.
        kind: "label" or "unsure".
        label: the cultivar (required for "label"; optional tentative one for "unsure").
        user: who.
        client_event_id: the caller's id for this submit (a fresh one when None).
        source: "expert" or "model-accepted".
        expected: the label the user saw (conflict detection), or NOT_GIVEN.
    """
    if kind not in ("label", "unsure"):
        raise UserFacing(f"Unknown label action {kind!r}.")
    if kind == "label" or label:
        label = _check_cultivar(store, label)
    store.image(int(image_id))  # UnknownImage before anything is written
    result = store.record_label(
        int(image_id), label, client_event_id=client_event_id or new_event_id(), user=user, source=source,
        kind=kind, expected_current=expected, allow_new_cultivar=False,
    )  # fmt: skip
    current = "unsure" if kind == "unsure" else label
    if not result.created:
        text = f"Already saved (image {image_id})."
    elif kind == "unsure":
        text = f"Image {image_id} marked unsure."
    else:
        text = f"Image {image_id} labelled {label}."
    if result.conflict:
        text += f" Note: someone changed this label to {result.previous or 'nothing'} meanwhile; yours is now current."
    return LabelOutcome(int(image_id), result.event_id, result.created, result.previous, current, result.conflict, text)


def undo(store: LabelStore, image_id: int, *, user: str, client_event_id: str | None = None) -> LabelOutcome:
    """Append an undo event (the image's previous label comes back)."""
    result = store.undo(int(image_id), client_event_id=client_event_id or new_event_id(), user=user)
    back = result.current or "no label"
    text = f"Undone: image {image_id} is back to {back}." if result.created else f"Already undone (image {image_id})."
    return LabelOutcome(int(image_id), result.event_id, result.created, result.previous, result.current, False, text)


def bulk_relabel(
    store: LabelStore, image_ids: list[int], label: str, *, user: str, client_event_id: str | None = None
) -> tuple[list[int], str]:
    """Give every selected image the same cultivar in one transaction; returns (event ids, message)."""
    if not image_ids:
        raise UserFacing("Select at least one image.")
    label = _check_cultivar(store, label)
    events = store.bulk_label(image_ids, label, client_event_id=client_event_id or new_event_id("bulk"), user=user)
    return events, f"{len(events)} image(s) labelled {label}."


def as_text(value: str | None) -> str:
    """A user-supplied string made safe for Markdown/HTML output (shown as the text it is)."""
    return html.escape(value or "", quote=True)
