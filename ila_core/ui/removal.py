"""Taking a mistaken upload out: archive (undoable, anyone) and delete the file for good (admins, confirmed).

Archiving is an event in the store's archive log: the image leaves the queues, training snapshots and label
exports, and a restore event (the session's Undo) brings it back. Deleting removes the stored file and its
thumbnail after a ``delete`` event is committed; the image's row and label history stay, because the log
refers to them, and the image can no longer be restored.
"""

from __future__ import annotations

import logging

import gradio as gr

from ..training.dataset import image_path
from .errors import UserFacing
from .history import Entry, History, action_entry, new_history, pushed
from .labelling import new_event_id
from .studio import Studio

__all__ = ["archive_image", "archive_selected", "delete_image_file"]

_logger = logging.getLogger(__name__)


def archive_image(studio: Studio, image_id: int, request: gr.Request | None) -> tuple[str, Entry | None]:
    """Archive one image; returns (message, the undo entry or None when it was archived already)."""
    user = studio.username(request)
    with studio.store() as store:
        result = store.archive_image(int(image_id), client_event_id=new_event_id("archive"), user=user)
    if not result.created:
        return f"Image #{image_id} is already archived.", None
    text = f"Image #{image_id} archived: it leaves the queues, training and exports. Undo (Z) brings it back."
    return text, action_entry("archive", [(int(image_id), result.event_id)])


def archive_selected(studio: Studio, chosen: list[str], hist: History | None, user: str | None) -> tuple[str, History]:
    """Archive the selected images (one undoable entry on the page's stack); the message and the new stack."""
    ids = list(dict.fromkeys(int(c) for c in chosen or []))
    if not ids:
        raise UserFacing("Select at least one image to archive.")
    pairs, already = [], 0
    with studio.store() as store, store.batch("archive selection"):
        for image_id in ids:
            result = store.archive_image(image_id, client_event_id=new_event_id("archive"), user=user)
            if result.created:
                pairs.append((image_id, result.event_id))
            else:
                already += 1
    if not pairs:
        return f"Nothing archived: the {already} selected image(s) were archived already.", hist or new_history()
    text = (f"Archived {len(pairs)} image(s): they leave the queues, training and exports."
            + (f" {already} were archived already." if already else "")
            + " Undo (Classify tab, Z) brings them back; refresh the queue to see it without them.")  # fmt: skip
    return text, pushed(hist, action_entry("archive", pairs, source="bulk"))


def delete_image_file(studio: Studio, image_id: int, request: gr.Request | None) -> str:
    """Delete an image's stored file for good (admins); the delete event is committed before the file goes.

    Raises:
        UserFacing: not an admin.
    """
    user = studio.require_admin(request, "delete image files")
    with studio.store() as store:
        row = store.image(int(image_id))
        if store.archive_state(int(image_id)) is None:
            store.archive_image(int(image_id), client_event_id=new_event_id("archive"), user=user)
        store.mark_deleted(int(image_id), client_event_id=new_event_id("delete"), user=user)
    path = image_path(studio.data_dir, row["rel_path"])
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        _logger.error("image %d: deleting %s failed: %s", image_id, path, exc)
        message = f"Image #{image_id} is archived, but its file could not be deleted; see the server log."
        raise UserFacing(message) from None
    studio.thumbs.forget(row["sha256"])
    if studio.embeddings is not None:  # its frozen embeddings go too (no exemplar or neighbour can show it)
        studio.embeddings.drop([row["sha256"]])
    _logger.info("user %r deleted the file of image %d for good", user, image_id)
    return f"Image #{image_id}'s file is deleted for good; its label history stays in the log."
