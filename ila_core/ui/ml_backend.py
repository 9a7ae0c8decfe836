"""Label Studio's ML backend, served by the app itself under ``/ml`` (beside Gradio's routes).

In Label Studio: project Settings -> Model -> Connect Model, URL ``http://<host>:7860/ml``. When the app has
users, choose Basic Authentication with an ILA Studio account (the same users file and login throttle as the
browser login; Gradio's own login does not cover these routes, so this module checks every request). Routes:

- ``GET /ml/health`` (and ``GET /ml``): ``{"status": "UP", "model_class", "model_version"}``.
- ``POST /ml/setup``: checks the project's labelling config names one cultivar ``Choices`` over an ``Image``;
  answers the served ``model_version`` (``v<id>``).
- ``POST /ml/predict``: one entry per task, in order: ``[prediction]`` with the served version's top-1 as a
  choice, its ``score`` and ``model_version``, or ``[]`` for a task whose image ILA Studio does not hold
  (tasks are matched by ``data.sha256`` or the sha256 in the image file name; nothing is fetched or stored
  but the prediction rows of stored images).
- ``POST /ml/webhook``: ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED`` are recorded as correction events
  attributed to the annotator, exactly as importing a Label Studio export (idempotent by annotation id and
  update time, undoable); ``START_TRAINING`` queues a retrain. These attribute work to other people or train,
  so they need an admin account. Deletions are answered, not applied (the label log is append-only).
- ``GET /ml/versions``: the stored model versions.

Only server calls are taken: a request with an ``Origin`` of another site (a web page) gets 403 and a POST
that is not ``application/json`` gets 415, so a page cannot make a visitor's browser post a "correction" to
an app that runs without login. Blocking work (store, model) runs on worker threads, at most
:data:`MAX_CONCURRENT` at once.
"""

from __future__ import annotations

import base64
import binascii
import functools
import html
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread

from ..data.formats.label_studio import apply_annotation, find_image
from ..data.formats.label_studio_ml import (
    ANNOTATION_EVENTS,
    DELETE_EVENTS,
    TRAIN_EVENT,
    ProtocolError,
    control_names,
    model_version,
    predict_tasks,
    task_prediction,
    webhook_annotation,
)
from .errors import UserFacing, user_message
from .middleware import ASGIApp, Receive, Scope, Send, header, respond
from .scoring import predictions_for
from .studio import LOCAL_USER, Studio
from .train import start_training

__all__ = ["DEFAULT_PREFIX", "MAX_BODY_BYTES", "MAX_CONCURRENT", "MAX_TASKS", "LabelStudioBackend"]

_logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "/ml"
MAX_BODY_BYTES = 16 * 1024 * 1024  # a predict batch of a few thousand tasks; more is refused with HTTP 413
MAX_TASKS = 1000  # per predict request (Label Studio sends tasks in batches well under this)
MAX_CONCURRENT = 2  # requests doing store or model work at once (the 2-core reference box)
MODEL_CLASS = "ILAStudio"
_REALM = 'Basic realm="ILA Studio ML backend", charset="UTF-8"'
_WEBHOOK_LAYOUT = "labelstudio-webhook"


@dataclass(frozen=True)
class Caller:
    """Who sent a request (the ``username`` the studio's role checks read) and whether they are an admin."""

    username: str
    admin: bool


class Refused(Exception):
    """A request answered with ``status`` and a message that names the problem."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


Answer = tuple[int, dict[str, Any]]


# -- handlers (plain functions on a worker thread) ------------------------------------------------


def health(studio: Studio, body: Any, caller: Caller) -> Answer:
    """Liveness, and the version that would answer."""
    return 200, {"status": "UP", "model_class": MODEL_CLASS, "model_version": model_version(studio.models.version_id)}


def setup(studio: Studio, body: Any, caller: Caller) -> Answer:
    """Check the project's labelling config; answer the served model version."""
    if not isinstance(body, dict):
        raise ProtocolError("a setup request is a JSON object with the project's labelling config as 'schema'")
    names = control_names(body.get("schema"), required=True)
    _logger.info("Label Studio project %s set up by %s (choices %r on %r)", body.get("project"), caller.username,
                 names.from_name, names.to_name)  # fmt: skip
    return 200, {"model_version": model_version(studio.models.version_id)}


def predict(studio: Studio, body: Any, caller: Caller) -> Answer:
    """The served version's top-1 for each task whose image is stored; ``[]`` for the others."""
    tasks = predict_tasks(body)
    if len(tasks) > MAX_TASKS:
        raise Refused(413, f"{len(tasks)} tasks in one predict request; send at most {MAX_TASKS}")
    names = control_names(body.get("label_config"))
    if studio.models.version_id is None:
        raise Refused(503, studio.models.unavailable())
    with studio.store() as store:
        rows = [find_image(store, t["data"]) if isinstance(t.get("data"), dict) else None for t in tasks]
        unique = list({int(r["id"]): r for r in rows if r is not None}.values())
        version, preds = predictions_for(store, studio.models, unique)
    if version is None:
        raise Refused(503, studio.models.unavailable())
    results = [[task_prediction(preds[int(r["id"])], version, names)] if r and preds.get(int(r["id"])) else []
               for r in rows]  # fmt: skip
    missing = sum(1 for r in results if not r)
    if missing:
        _logger.info("predict: %d of %d tasks name no stored image (data.sha256 or file name)", missing, len(tasks))
    return 200, {"results": results, "model_version": model_version(version)}


def webhook(studio: Studio, body: Any, caller: Caller) -> Answer:
    """Record an annotation event as a correction, queue a retrain, or say why an event is not applied."""
    action = body.get("action") if isinstance(body, dict) else None
    if not isinstance(action, str):
        raise ProtocolError("a webhook event is a JSON object with an 'action'")
    if action in DELETE_EVENTS:
        return 200, {"status": "ignored", "reason": "deletions are not applied: ILA Studio's label log is "
                     "append-only; undo the label in ILA Studio if it should go"}  # fmt: skip
    if action not in ANNOTATION_EVENTS and action != TRAIN_EVENT:
        return 200, {"status": "Unknown event", "action": action}
    if not caller.admin:
        verb = "queue training" if action == TRAIN_EVENT else "record Label Studio annotations"
        raise Refused(403, f"only admins may {verb}; connect Label Studio with an admin account of ILA Studio")
    if action == TRAIN_EVENT:
        try:
            job_id, message = start_training(studio, caller)
        except UserFacing as exc:
            raise Refused(409, str(exc)) from None
        return 201, {"status": "queued", "job_id": job_id, "message": message}
    project = body.get("project") if isinstance(body.get("project"), dict) else {}
    annotation = webhook_annotation(body, control_names(project.get("label_config")))
    with studio.store() as store:
        result = apply_annotation(store, annotation, _WEBHOOK_LAYOUT, caller.username, True)
    status = {"imported": 201, "rejected": 422}.get(result.status, 200)
    _logger.info("webhook %s: %s %s", action, result.status, result.reason)
    return status, {"status": result.status, "reason": result.reason, "image_id": result.image_id,
                    "label": result.label}  # fmt: skip


def versions(studio: Studio, body: Any, caller: Caller) -> Answer:
    """Stored model versions, newest first."""
    with studio.store() as store:
        rows = store.model_versions()
    return 200, {"versions": [model_version(int(v["id"])) for v in rows],
                 "model_version": model_version(studio.models.version_id)}  # fmt: skip


Handler = Callable[[Studio, Any, Caller], Answer]
ROUTES: dict[tuple[str, str], Handler] = {
    ("GET", ""): health,
    ("GET", "/health"): health,
    ("POST", "/setup"): setup,
    ("POST", "/predict"): predict,
    ("POST", "/webhook"): webhook,
    ("GET", "/versions"): versions,
}


# -- the ASGI layer ----------------------------------------------------------------------------------


def _basic_credentials(scope: Scope) -> tuple[str, str] | None:
    value = header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        name, sep, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (name.strip(), password) if sep else None


def _check_server_call(scope: Scope) -> None:
    """Refuse what only a web page would send: these routes are for servers (Label Studio), never browsers.

    Without a login (loopback), a page on another site could otherwise make the visitor's browser post a
    "correction" here. A cross-site page can send neither JSON (that needs a preflight, which is not answered)
    nor a request without its ``Origin``; servers send JSON and no ``Origin``.
    """
    origin = header(scope, b"origin")
    if origin is not None:
        host = header(scope, b"host") or ""
        if urlsplit(origin).netloc.lower() != host.lower():
            raise Refused(403, "the ML backend takes calls from servers such as Label Studio, not from web pages")
    if scope.get("method") == "POST":
        kind = (header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
        if kind != "application/json":
            raise Refused(415, "send the request body as JSON with 'Content-Type: application/json'")


class LabelStudioBackend:
    """ASGI middleware answering ``<prefix>/...`` with the ML backend; every other path goes to Gradio.

    Args:
        app: the ASGI app behind (Gradio's).
        studio: the running studio (users, login throttle, model, store).
        prefix: where the backend lives.
    """

    def __init__(self, app: ASGIApp, studio: Studio, prefix: str = DEFAULT_PREFIX) -> None:
        self.app, self.studio, self.prefix = app, studio, prefix.rstrip("/")
        self._limiter = anyio.CapacityLimiter(MAX_CONCURRENT)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != self.prefix and not path.startswith(self.prefix + "/"):
            await self.app(scope, receive, send)
            return
        route = path[len(self.prefix) :].rstrip("/")
        handler = ROUTES.get((scope.get("method", ""), route))
        try:
            if handler is None:
                known = sorted({r for _, r in ROUTES if r == route})
                raise Refused(405 if known else 404, f"no {scope.get('method')} {path} in the ML backend")
            _check_server_call(scope)
            caller = self._authenticate(scope)
            body = await self._json_body(receive) if scope.get("method") == "POST" else None
            run = functools.partial(handler, self.studio, body, caller)
            status, answer = await anyio.to_thread.run_sync(run, limiter=self._limiter)
        except Refused as exc:
            await respond(send, exc.status, {"detail": exc.detail}, exc.headers)
            return
        except ProtocolError as exc:
            await respond(send, 400, {"detail": str(exc)})
            return
        except Exception as exc:  # noqa: BLE001 - answer with the message when it is meant for users, else a reference
            message = user_message(exc)
            if message is not None:
                await respond(send, 400, {"detail": html.unescape(message)})
                return
            _logger.exception("ML backend %s failed", path)
            await respond(send, 500, {"detail": "something went wrong; the details are in the server log"})
            return
        await respond(send, status, answer)

    def _authenticate(self, scope: Scope) -> Caller:
        users = self.studio.users
        if users is None:  # loopback without login: the single local user, as in the browser
            return Caller(LOCAL_USER, True)
        credentials = _basic_credentials(scope)
        if credentials is None:
            raise Refused(401, "log in: Basic authentication with an ILA Studio account", {"www-authenticate": _REALM})
        name, password = credentials
        address = (scope.get("client") or ("unknown",))[0]
        throttle = self.studio.logins
        wait = throttle.retry_after(name, address)
        if wait > 0:
            raise Refused(429, throttle.message(wait), {"retry-after": str(int(wait) + 1)})
        if not users.check(name, password):
            throttle.failed(name, address)
            _logger.warning("ML backend login failed for a user name of %d characters from %s", len(name), address)
            raise Refused(401, "wrong user name or password", {"www-authenticate": _REALM})
        throttle.succeeded(name, address)
        return Caller(name, users.is_admin(name))

    async def _json_body(self, receive: Receive) -> Any:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                raise Refused(413, f"request body over {MAX_BODY_BYTES // (1024 * 1024)} MiB")
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                break
        if not body.strip():
            raise ProtocolError("the request has no body; the ML backend takes JSON")
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProtocolError(f"the request body is not JSON ({exc})") from None
