"""What the person at the browser sees when something fails: a ``gr.Error`` with a plain message, never a traceback.

Every event handler is wrapped with :func:`guarded`. Errors the code raises on purpose for bad input or a
busy resource (the store's family, ``BadImage``, ``JobBusy``, argument ``ValueError``) keep their message,
scrubbed of file-system paths; anything else is logged with its traceback under a short reference and the
user gets "something went wrong (ref ...)" (RELIABILITY catalogue API-13).
"""

from __future__ import annotations

import functools
import html
import logging
import re
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr

from ..images import BadImage
from ..store import JobBusy, StoreError

__all__ = ["UserFacing", "guarded", "scrub", "user_message"]

_logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# Absolute POSIX or Windows paths, and file URLs: never shown to users (they reveal the server layout).
_PATH = re.compile(r"(?:file://)?(?:(?<![\w.])/(?:[\w.@+-]+/)+[\w.@+-]*|[A-Za-z]:\\(?:[^\\\s]+\\)*[^\\\s]*)")
_MAX_CHARS = 400


class UserFacing(Exception):
    """An error whose message is written for the user (raised by UI code for refusals).

    Args:
        message: the text shown.
        keep_paths: show the paths in it (only for admin-configured ones shown to admins, e.g. import roots).
    """

    def __init__(self, message: str, *, keep_paths: bool = False) -> None:
        super().__init__(message)
        self.keep_paths = keep_paths


def scrub(message: str, *, keep_paths: bool = False) -> str:
    """Drop file-system paths, cap the length and HTML-escape a message meant for the browser.

    Gradio renders toast messages as (sanitised) HTML, so a cultivar name like ``<img src=x>`` is escaped here
    to show as the text it is.
    """
    text = str(message).strip() if keep_paths else _PATH.sub("[path]", str(message)).strip()
    text = text if len(text) <= _MAX_CHARS else text[: _MAX_CHARS - 1] + "…"
    return html.escape(text, quote=False)


def user_message(exc: BaseException) -> str | None:
    """The message to show for an expected error, or None when it is unexpected (log it, show a reference)."""
    if isinstance(exc, UserFacing):
        return scrub(str(exc), keep_paths=exc.keep_paths)
    if isinstance(exc, (BadImage, JobBusy, StoreError)):
        return scrub(str(exc))
    if type(exc) is ValueError:  # argument checks raise plain ValueError with a message meant for the caller
        return scrub(str(exc))
    return None


def guarded(fn: F) -> F:
    """Wrap a Gradio handler: expected errors become ``gr.Error(message)``, others a logged reference."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            message = user_message(exc)
            if message is not None:
                _logger.info("%s refused: %s", fn.__name__, message)
                raise gr.Error(message, print_exception=False) from None
            ref = uuid.uuid4().hex[:8]
            _logger.exception("handler %s failed (ref %s)", fn.__name__, ref)
            raise gr.Error(
                f"Something went wrong (ref {ref}). The details are in the server log.", print_exception=False
            ) from None

    return wrapper  # type: ignore[return-value]
