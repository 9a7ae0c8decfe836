""":class:`StudioBlocks`: ``gr.Blocks`` whose refusals of request files never echo server paths.

Gradio refuses a file reference (``FileData.path``) that is not in its upload cache before any handler runs,
and its message names the absolute path, the blocked folders and the users file among them. That check is
right; only its words are replaced here by one generic refusal, and the details go to the server log.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import gradio as gr
from gradio.exceptions import InvalidPathError
from gradio_client.utils import is_file_obj_with_meta, is_http_url_like, traverse

__all__ = ["FILE_REFUSED", "StudioBlocks"]

_logger = logging.getLogger(__name__)

FILE_REFUSED = "File refused: send files you upload to this app (image files, or a .zip of images where offered)."
_CACHE_REFUSAL = "is not in the cache folder"  # Gradio's wording for a prop input outside the cache


def _require_regular_file(payload: dict[str, Any]) -> dict[str, Any]:
    path = payload.get("path")
    if isinstance(path, str) and path and not is_http_url_like(path) and os.path.lexists(path):
        if os.path.islink(path) or not os.path.isfile(path):
            _logger.warning("refused a request file that is not a regular file: %s", path)
            raise gr.Error(FILE_REFUSED, print_exception=False)
    return payload


class StudioBlocks(gr.Blocks):
    """The app's Blocks: Gradio's own input-file checks, with a generic message for their refusals."""

    async def preprocess_data(self, block_fn: Any, inputs: list[Any], *args: Any, **kwargs: Any) -> Any:
        """Gradio's preprocessing; a file outside the upload cache, or not a regular file, gets :data:`FILE_REFUSED`."""
        # Gradio accepts a folder inside its cache (and then tracks it as a cached file): refuse it first.
        traverse(inputs, _require_regular_file, is_file_obj_with_meta)
        try:
            return await super().preprocess_data(block_fn, inputs, *args, **kwargs)
        except InvalidPathError as exc:
            _logger.warning("refused a request file: %s", exc)
            raise gr.Error(FILE_REFUSED, print_exception=False) from None
        except gr.Error as exc:
            if _CACHE_REFUSAL not in str(exc.message):
                raise
            _logger.warning("refused a request file: %s", exc.message)
            raise gr.Error(FILE_REFUSED, print_exception=False) from None
