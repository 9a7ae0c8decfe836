"""Files from the browser and the API go through one door (:func:`ila_core.data.uploads.accept_uploads`).

This module only adds what the web app knows: the caller's role (only admins may create cultivars, through
folder names in a zip), Gradio's upload cache as the one place uploaded files may come from, and refusals
as messages for the user.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr

from ..data.uploads import UploadPolicy, UploadRefused, UploadReport, check_uploads, store_uploads
from .errors import UserFacing
from .studio import Studio

__all__ = ["MAX_UPLOAD_FILES", "file_paths", "receive_uploads"]

MAX_UPLOAD_FILES = 200  # one browser upload; bigger sets go through a .zip (IMG-26)


def file_paths(files: Any) -> list[str]:
    """Paths of what Gradio handed the handler: a path string, a FileData (object or dict), or a list of them."""
    items = files if isinstance(files, (list, tuple)) else [files]
    out = []
    for item in items:
        path = item.get("path") if isinstance(item, dict) else getattr(item, "path", item)
        if not isinstance(path, str) or not path:
            raise UserFacing("Refused: send image files you upload. Nothing was stored.")
        out.append(path)
    return out


def receive_uploads(
    studio: Studio,
    files: Sequence[str],
    request: gr.Request | None,
    *,
    allow_zip: bool = True,
    before_store: Callable[[], None] | None = None,
    split: str | None = None,
) -> UploadReport:
    """Check one upload as a whole, then store its images for the calling user.

    Args:
        studio: the running studio.
        files: paths Gradio wrote into its upload cache for this request.
        request: who is calling (admins may create cultivars through folder names in a zip).
        allow_zip: accept zips of images too (the tabs); the API's /predict takes one image.
        before_store: called after the checks pass and before anything is written (it may refuse).
        split: 'train' or 'holdout' for every new image; None leaves them unassigned (or the zip's split folders).

    Raises:
        UserFacing: the upload is refused as a whole (nothing written), e.g. a CSV, a folder, a zip where
            only an image is accepted, or a full disk.
    """
    user = studio.username(request)
    policy = UploadPolicy(allow_zip=allow_zip, max_files=MAX_UPLOAD_FILES if allow_zip else 1,
                          new_cultivars=studio.is_admin(request))  # fmt: skip
    try:
        checked = check_uploads(files, upload_root=studio.temp_dir, policy=policy)
        if before_store is not None:
            before_store()
        return store_uploads(checked, studio.data_dir, user=user, policy=policy, split=split)
    except UploadRefused as exc:
        raise UserFacing(str(exc)) from None
