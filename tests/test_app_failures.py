"""Failures that must say what happened: throttled logins, a full disk at the upload route, an unreadable model.

The throttle and the middleware are tested on their own (injected clock, a stand-in ASGI app); one small app
(no worker, no demo set) checks the upload route end to end (RELIABILITY catalogue API-11, API-19, API-20).
"""

from __future__ import annotations

import asyncio
import errno
import json
from types import SimpleNamespace

import httpx
import pytest
from ui_support import launched, small_options

from ila_core.config import AppConfig
from ila_core.ui import Studio
from ila_core.ui.middleware import STORAGE_FULL, LoginGuard, UploadGuard
from ila_core.ui.throttle import LoginThrottle, ThrottlePolicy

# -- login throttle ------------------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_free_failures_then_a_doubling_wait():
    """Five wrong passwords cost nothing; the sixth makes the user wait 2 s, the seventh 4 s."""
    clock = _Clock()
    throttle = LoginThrottle(ThrottlePolicy(free_failures=5, base_delay_s=2.0), clock=clock)
    waits = []
    for _ in range(7):
        throttle.failed("bob", "10.0.0.1")
        waits.append(throttle.retry_after("bob", "10.0.0.1"))
    assert waits == [0, 0, 0, 0, 0, 2.0, 4.0]
    clock.now += 4.0
    assert throttle.retry_after("bob", "10.0.0.1") == 0


def test_address_is_throttled_across_user_names():
    """Spraying many user names from one address is throttled by the address count."""
    throttle = LoginThrottle(ThrottlePolicy(free_failures=5, free_failures_per_address=20), clock=_Clock())
    for n in range(21):
        throttle.failed(f"user{n}", "10.0.0.2")
    assert throttle.retry_after("someone-new", "10.0.0.2") > 0 and throttle.retry_after("someone-new", "10.0.0.3") == 0


def test_success_clears_and_waits_are_bounded():
    """A correct login clears the counts; no wait exceeds max_delay_s; old failures are forgotten."""
    clock = _Clock()
    throttle = LoginThrottle(ThrottlePolicy(max_delay_s=60.0, forget_after_s=600.0), clock=clock)
    for _ in range(40):
        throttle.failed("bob", "a")
    assert throttle.retry_after("bob", "a") == 60.0
    throttle.succeeded("bob", "a")
    assert throttle.retry_after("bob", "a") == 0
    throttle.failed("eve", "b")
    clock.now += 601
    assert throttle._wait(("user", "eve"), 0, clock.now) == 0


def _run_asgi(app, method: str, path: str, body: bytes = b"", headers=()) -> tuple[int, dict]:
    """Call an ASGI app once; returns (status, JSON body or {})."""
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": list(headers), "client": ("10.0.0.9", 1)}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    raw = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, (json.loads(raw) if raw.startswith(b"{") else {})


def _fake_login(expected: str):
    """A stand-in for Gradio's /login: 200 for the expected password, 400 otherwise."""

    async def app(scope, receive, send):
        body = (await receive())["body"].decode()
        ok = f"password={expected}" in body
        await send({"type": "http.response.start", "status": 200 if ok else 400, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


def test_login_guard_refuses_during_the_wait_without_asking_the_app():
    """Once throttled, even the right password gets 429 and the message; the app behind is not called."""
    throttle = LoginThrottle(ThrottlePolicy(free_failures=2), clock=_Clock())
    guard = LoginGuard(_fake_login("right-one"), throttle)
    form = [(b"content-type", b"application/x-www-form-urlencoded")]
    codes = [_run_asgi(guard, "POST", "/login", f"username=bob&password=w{n}".encode(), form)[0] for n in range(3)]
    status, body = _run_asgi(guard, "POST", "/login/", b"username=bob&password=right-one", form)
    assert codes == [400, 400, 400] and status == 429 and body["detail"].startswith("Too many failed logins")


# -- full disk at the upload route ---------------------------------------------------------------------------


def _ok_app(scope, receive, send):
    async def run():
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"[]"})

    return run()


def test_upload_guard_checks_free_space_first(tmp_path, monkeypatch):
    """Too little free space: 507 with "storage full" before the upload is read; other routes pass."""
    monkeypatch.setattr("ila_core.ui.middleware.shutil.disk_usage", lambda _: SimpleNamespace(free=1000))
    guard = UploadGuard(_ok_app, tmp_path)
    status, body = _run_asgi(guard, "POST", "/gradio_api/upload", b"x" * 10, [(b"content-length", b"10")])
    assert status == 507 and body["detail"] == STORAGE_FULL
    assert _run_asgi(guard, "GET", "/config")[0] == 200


def test_upload_guard_turns_enospc_into_storage_full(tmp_path):
    """ENOSPC while the upload is written: 507 with the same message, not a bare HTTP 500."""

    async def full(scope, receive, send):
        raise OSError(errno.ENOSPC, "No space left on device")

    status, body = _run_asgi(UploadGuard(full, tmp_path, reserve_bytes=0), "POST", "/gradio_api/upload")
    assert status == 507 and "storage full" in body["detail"]


def test_full_disk_upload_route_answers_storage_full(tmp_path, monkeypatch):
    """End to end: the app's upload route answers 507 "storage full" when the disk is full (API-20)."""
    with launched(tmp_path / "data", small_options(start_worker=False, seed_demo=False)) as (_, url, studio):
        monkeypatch.setattr("ila_core.ui.middleware.shutil.disk_usage", lambda _: SimpleNamespace(free=0))
        r = httpx.post(url.rstrip("/") + "/gradio_api/upload", files={"files": ("a.png", b"\x89PNG\r\n\x1a\n")})
        monkeypatch.undo()
        ok = httpx.post(url.rstrip("/") + "/gradio_api/upload", files={"files": ("a.png", b"\x89PNG\r\n\x1a\n")})
    assert r.status_code == 507 and "storage full, upload not saved" in r.json()["detail"] and ok.status_code == 200
    assert not any(p.is_file() for p in studio.temp_dir.rglob("*") if p.name == "a.png" and p.stat().st_size == 0)


# -- an unreadable model file --------------------------------------------------------------------------------


def test_corrupt_checkpoint_of_the_only_version_is_named(tmp_path):
    """API-19: the only version's file is corrupt: the message names the file and offers retraining."""
    config = AppConfig(data_dir=tmp_path / "data")
    with Studio.open(config, small_options(start_worker=False, seed_demo=False)) as studio:
        (studio.data_dir / "adapters").mkdir(exist_ok=True)
        (studio.data_dir / "adapters" / "v0001.safetensors").write_bytes(b"\x00garbage" * 100)
        with studio.store() as store:
            vid = store.add_model_version(path="adapters/v0001.safetensors", sha256="0" * 64, manifest={}, metrics={},
                                          parent_id=None, snapshot_event_id=0, job_id=None)  # fmt: skip
            store.activate_version(vid, user="test")
        studio.follow_model()
        message = studio.models.unavailable()
    assert studio.models.version_id is None
    assert "adapters/v0001.safetensors" in message and "unreadable" in message and "Retrain" in message
    assert "first training job" not in message and str(tmp_path) not in message


@pytest.mark.parametrize("job", [True, False], ids=["job-queued", "no-job"])
def test_no_model_message_says_whether_a_job_exists(tmp_path, job):
    """Without any version the message names the queued job, or says none exists (never a job that isn't there)."""
    config = AppConfig(data_dir=tmp_path / "data")
    with Studio.open(config, small_options(start_worker=False, seed_demo=False)) as studio:
        if job:
            with studio.store() as store:
                studio.enqueue_training(store, user="test")
        message = studio.models.unavailable()
    assert ("training job 1 is queued" in message) == job and ("Retrain on the Train tab" in message) == (not job)


# -- a burst against a full queue ----------------------------------------------------------------------------


def test_queue_guard_refuses_at_once_when_the_queue_is_full():
    """LOAD-02: a join while the queue is at max_size gets 503 "Queue is full" without reaching Gradio's route."""
    from ila_core.ui.middleware import QueueGuard

    class _Queue(list):
        max_size = 2

    blocks = SimpleNamespace(_queue=_Queue([1, 2]))
    reached = []

    async def gradio(scope, receive, send):
        reached.append(scope["path"])
        await _ok_app(scope, receive, send)

    guard = QueueGuard(gradio)
    app = SimpleNamespace(get_blocks=lambda: blocks)

    def call(path: str) -> tuple[int, dict]:
        sent: list[dict] = []

        async def receive():
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message):
            sent.append(message)

        asyncio.run(guard({"type": "http", "method": "POST", "path": path, "headers": [], "app": app}, receive, send))
        raw = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return next(m["status"] for m in sent if m["type"] == "http.response.start"), json.loads(raw)

    status, body = call("/gradio_api/queue/join")
    blocks._queue = _Queue([1])
    assert status == 503 and body["detail"].startswith("Queue is full") and reached == []
    assert call("/gradio_api/queue/join")[0] == 200 and reached == ["/gradio_api/queue/join"]
