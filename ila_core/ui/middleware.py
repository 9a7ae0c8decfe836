"""ASGI middleware in front of Gradio's own routes: login throttling, the upload route's disk check, queue-full.

They wrap routes that Gradio defines and no handler of ours sees: ``POST /login`` (throttled per user name
and address, :mod:`ila_core.ui.throttle`), ``POST /gradio_api/upload`` (refused with "storage full" when the
disk lacks room, and when writing the upload fails for lack of space, instead of a bare HTTP 500) and
``POST /gradio_api/queue/join`` (refused with HTTP 503 before any parsing when the queue is full, so a burst
is turned away at once). They are passed to Gradio's FastAPI app through
``launch(app_kwargs={"middleware": [...]})``.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from starlette.requests import Request

from .throttle import LoginThrottle

__all__ = ["LoginGuard", "QueueGuard", "UploadGuard", "STORAGE_FULL", "header", "respond"]

_logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STORAGE_FULL = "storage full, upload not saved: the server's disk has no room for it. Free some space or ask the admin."
_MAX_LOGIN_BODY = 64 * 1024
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


async def respond(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    """Send a whole JSON response (``body``) with ``status`` and extra headers."""
    raw = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    head += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": raw})


def _is_post(scope: Scope, suffix: str) -> bool:
    return scope["type"] == "http" and scope.get("method") == "POST" and scope["path"].rstrip("/").endswith(suffix)


class LoginGuard:
    """Refuses ``POST /login`` with HTTP 429 while the user name or the address must wait; counts the outcome.

    Args:
        app: the ASGI app behind (Gradio's).
        throttle: the process's counts.
    """

    def __init__(self, app: ASGIApp, throttle: LoginThrottle) -> None:
        self.app, self.throttle = app, throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_post(scope, "/login"):
            await self.app(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > _MAX_LOGIN_BODY:
                await respond(send, 413, {"detail": "Login request too large."})
                return
        user = await _username(scope, body)
        address = (scope.get("client") or ("unknown",))[0]
        wait = self.throttle.retry_after(user, address)
        if wait > 0:
            _logger.warning("login throttled for a user name of %d characters from %s (%.0f s)", len(user), address,
                            wait)  # fmt: skip
            await respond(send, 429, {"detail": LoginThrottle.message(wait)}, {"retry-after": str(int(wait) + 1)})
            return
        status: list[int] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        await self.app(scope, _replay(body, receive), watch)
        if status and status[0] == 200:
            self.throttle.succeeded(user, address)
        elif status and status[0] in (400, 401, 403):
            self.throttle.failed(user, address)


async def _username(scope: Scope, body: bytes) -> str:
    """The form's ``username`` as Gradio reads it (stripped); empty if the body is not a form."""
    request = Request(scope, _replay(body, None))
    try:
        form = await request.form()
        name = str(form.get("username", "")).strip()
        await form.close()
    except Exception:  # noqa: BLE001 - a malformed body is Gradio's to refuse; count it under the empty name
        return ""
    return name


def _replay(body: bytes, receive: Receive | None) -> Receive:
    """A ``receive`` that hands out the buffered body once, then defers to the real one (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if receive is None:
            return {"type": "http.disconnect"}
        return await receive()

    return replay


class UploadGuard:
    """Answers ``POST .../gradio_api/upload`` with HTTP 507 and a clear message when the disk is full.

    Args:
        app: the ASGI app behind (Gradio's).
        folder: where uploads are written (Gradio's cache, inside the data directory).
        reserve_bytes: free space that must remain after the upload.
    """

    def __init__(self, app: ASGIApp, folder: Path, reserve_bytes: int = 64_000_000) -> None:
        self.app, self.folder, self.reserve = app, Path(folder), reserve_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_post(scope, "/gradio_api/upload"):
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        try:
            free = shutil.disk_usage(self.folder).free
        except OSError:
            free = None  # unknown: the write itself will tell
        if free is not None and free < length + self.reserve:
            _logger.warning("upload refused: %d bytes free under %s, %d needed", free, self.folder, length)
            await respond(send, 507, {"detail": STORAGE_FULL})
            return
        started: list[bool] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                started.append(True)
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except OSError as exc:
            if exc.errno not in _NO_SPACE or started:
                raise
            _logger.warning("upload failed for lack of space: %s", exc)
            await respond(send, 507, {"detail": STORAGE_FULL})


def header(scope: Scope, name: bytes) -> str | None:
    """The request header ``name`` (lower-case bytes), or None."""
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _content_length(scope: Scope) -> int:
    try:
        return max(0, int(header(scope, b"content-length") or 0))
    except ValueError:
        return 0


class QueueGuard:
    """Answers ``POST .../gradio_api/queue/join`` with 503 "Queue is full" while the queue is at ``max_size``.

    Gradio refuses the same request itself, but only after authentication, body parsing and validation;
    under a burst those run behind the accepted requests' work on the event loop and the refusals take
    seconds (LOAD-02). The count is read from the app's queue; anything unexpected passes through to Gradio.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _is_post(scope, "/gradio_api/queue/join"):
            full = _queue_full(scope.get("app"))
            if full is not None:
                await respond(send, 503, {"detail": full})
                return
        await self.app(scope, receive, send)


def _queue_full(app: Any) -> str | None:
    """Gradio's own "Queue is full" text when the app's queue is at its limit, else None."""
    try:
        queue = app.get_blocks()._queue  # noqa: SLF001 - Gradio exposes no public size of its queue
        size, limit = len(queue), queue.max_size
    except Exception:  # noqa: BLE001 - not a Gradio app or another version: let Gradio decide
        return None
    if limit is None or size < limit:
        return None
    return f"Queue is full. Max size is {limit} and size is {size}."
