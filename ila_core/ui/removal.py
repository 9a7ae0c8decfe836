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
from .history import Entry, action_entry
from .labelling import new_event_id
from .studio import Studio

__all__ = ["archive_image", "delete_image_file"]

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
