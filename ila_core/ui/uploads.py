"""Files from the browser and the API go through one door (:func:`ila_core.data.uploads.accept_uploads`).

This module only adds what the web app knows: the caller's role (only admins may create cultivars, through
folder names in a zip), Gradio's upload cache as the one place uploaded files may come from, and refusals
as messages for the user.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from ..data.uploads import UploadPolicy, UploadRefused, UploadReport, check_uploads, store_uploads
from ..images import BadImage, LoadedImage, load_image
from .errors import UserFacing
from .studio import Studio

__all__ = ["MAX_CLASSIFY_FILES", "MAX_UPLOAD_FILES", "ReadUpload", "file_paths", "read_uploads", "receive_uploads"]

_logger = logging.getLogger(__name__)

MAX_UPLOAD_FILES = 200  # one browser upload; bigger sets go through a .zip (IMG-26)
MAX_CLASSIFY_FILES = 64  # one /classify_batch call: a model batch or four, answered while the caller waits


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


@dataclass(frozen=True)
class ReadUpload:
    """One file of a read-only upload: the decoded image, or why it was refused."""

    name: str
    image: LoadedImage | None
    reason: str | None = None


def read_uploads(studio: Studio, files: Sequence[str], *, max_files: int = MAX_CLASSIFY_FILES) -> list[ReadUpload]:
    """Decode uploaded image files for a prediction, storing nothing (one result per file, in order).

    The same door as :func:`receive_uploads` (only regular files in Gradio's upload cache, decided by their
    bytes, decoded by :mod:`ila_core.images`), but nothing reaches the store, and each accepted file is
    removed from the upload cache once decoded, so the server keeps no copy.

    Raises:
        UserFacing: no files, or more than ``max_files``.
    """
    if not files:
        raise UserFacing("No file received. Send image files. Nothing was stored.")
    if len(files) > max_files:
        raise UserFacing(f"Too many files in one call: {len(files)} > {max_files}. Send them in smaller batches.")
    policy = UploadPolicy(allow_zip=False, max_files=1)
    out = []
    for file in files:
        name = Path(file).name or "upload"
        try:
            path = check_uploads([file], upload_root=studio.temp_dir, policy=policy).files[0][0]
        except UploadRefused as exc:  # not in the cache, not an image: left alone, never touched
            out.append(ReadUpload(name, None, str(exc)))
            continue
        try:
            out.append(ReadUpload(name, load_image(path)))
        except BadImage as exc:
            out.append(ReadUpload(name, None, f"{name}: {exc}. Nothing was stored."))
        finally:
            try:
                path.unlink()  # checked above: a regular file inside the upload cache
            except OSError as exc:
                _logger.warning("could not remove a classified upload from the cache: %s", exc)
    return out
