"""Helpers for the web-app tests: a small studio, a launched app on a free loopback port, raw queue calls.

Not a conftest: the UI tests import what they need explicitly.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from ila_core.config import AppConfig
from ila_core.ui import TEST_BACKBONE, DemoSpec, Studio, StudioOptions, build_app, launch_settings, queue_settings
from ila_core.ui.auth import Users

SMALL_DEMO = DemoSpec(num_cultivars=3, image_size=96, train_per_class=6, holdout_per_class=2, pool_per_class=2)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def small_options(**overrides: Any) -> StudioOptions:
    """Tiny random-init ViT at 96 px, 3 synthetic cultivars, 2-epoch retrains."""
    base = {"backbone": TEST_BACKBONE, "demo": SMALL_DEMO, "train_overrides": (("epochs", 2),), "poll_seconds": 1.0}
    return StudioOptions(**(base | overrides))


@contextlib.contextmanager
def launched(
    data_dir: Path, options: StudioOptions, *, users: Users | None = None, queue_size: int = 32
) -> Iterator[tuple[Any, str, Studio]]:
    """Open a studio, build and launch the app on a free port; yields (demo, url, studio); closes both."""
    config = AppConfig(data_dir=data_dir, port=free_port(), queue_size=queue_size)
    studio = Studio.open(config, options, users=users)
    demo = None
    try:
        demo = build_app(config, studio=studio)
        demo.queue(**queue_settings(config))
        _, url, _ = demo.launch(**launch_settings(config, studio, quiet=True), prevent_thread_lock=True)
        yield demo, url, studio
    finally:
        if demo is not None:
            demo.close()
        studio.close()


@contextlib.contextmanager
def served(
    data_dir: Path, options: StudioOptions, *, users: Users | None = None
) -> Iterator[tuple[Any, str, Studio]]:
    """:func:`launched`, once the first (seeded) training job has succeeded: a studio serving its first model."""
    with launched(data_dir, options, users=users) as (demo, url, studio):
        job = wait_for_job(studio, timeout=120)
        assert job["status"] == "succeeded", job["message"]
        yield demo, url, studio


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll ``predicate()`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_for_job(studio: Studio, job_id: int | None = None, timeout: float = 90.0) -> dict[str, Any]:
    """The job row once it is final and the worker is idle again (its promotion, if any, is being served).

    Waiting for the worker thread too keeps the next test from seeding torch's global RNG while the
    promotion callback rebuilds the model (random-init rebuilds rely on that RNG; see the report).
    """

    def final() -> dict[str, Any] | None:
        with studio.store() as store:
            jobs = store.jobs(limit=1) if job_id is None else [store.job(job_id)]
        job = jobs[0] if jobs else None
        done = job is not None and job["status"] in ("succeeded", "failed", "cancelled")
        idle = studio.worker is None or not studio.worker.busy
        return job if done and idle else None

    return wait_for(final, timeout, f"training job {job_id or '(newest)'} to finish")


def fn_index(url: str, api_name: str, client: httpx.Client | None = None) -> int:
    """The dependency id of a named event (private ones included) from the app's /config."""
    http = client or httpx.Client()
    config = http.get(url.rstrip("/") + "/config").json()
    for dep in config["dependencies"]:
        if dep.get("api_name") == api_name:
            return int(dep["id"])
    raise KeyError(api_name)


def raw_queue_call(
    url: str, index: int, data: list[Any], client: httpx.Client, timeout: float = 30.0
) -> dict[str, Any]:
    """POST to /gradio_api/queue/join like a browser would, read the SSE stream to the final message.

    Returns:
        The ``process_completed`` message (``success``, ``output``), or ``{"status_code": N}`` when refused.
    """
    base = url.rstrip("/")
    session = uuid.uuid4().hex
    body = {"data": data, "fn_index": index, "session_hash": session, "event_data": None, "trigger_id": None}
    joined = client.post(f"{base}/gradio_api/queue/join", json=body, timeout=timeout)
    if joined.status_code != 200:
        return {"status_code": joined.status_code}
    with client.stream("GET", f"{base}/gradio_api/queue/data", params={"session_hash": session}, timeout=timeout) as r:
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            msg = json.loads(line[5:])
            if msg.get("msg") == "process_completed":
                return msg
    raise AssertionError("queue stream ended without process_completed")
