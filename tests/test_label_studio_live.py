"""Opt-in: a real Label Studio server on loopback uses the app as its ML backend (``-m slow``).

Set ``ILA_LABEL_STUDIO`` to a ``label-studio`` executable (its own virtual environment: the server pins
packages that do not install beside ours, e.g. ``python -m venv /tmp/ls && /tmp/ls/bin/pip install
label-studio``), then ``pytest -m slow tests/test_label_studio_live.py``. Last run against Label Studio 1.23.2.

The app runs with a users file, so this is the setup the README gives: the ML backend connected with Basic
authentication, and the project webhook Label Studio creates for it given the same ``Authorization`` header.
Label Studio blocks loopback addresses as SSRF protection unless ``USE_DEFAULT_BANNED_SUBNETS=false``.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess

import httpx
import pytest
from ui_support import free_port, served, small_options, wait_for

from ila_core.data.formats.label_studio import export_tasks, label_config
from ila_core.ui.auth import Users

pytestmark = pytest.mark.slow

EXECUTABLE = os.environ.get("ILA_LABEL_STUDIO")
TOKEN = "0123456789abcdef0123456789abcdef01234567"
ADMIN, PASSWORD = "ana", "correct-horse-battery"


@pytest.fixture
def label_studio(tmp_path):
    """A fresh Label Studio server on a free loopback port; yields its URL."""
    if not EXECUTABLE:
        pytest.skip("set ILA_LABEL_STUDIO to a label-studio executable to run against a real server")
    base, port = tmp_path / "ls", free_port()
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(base), "USE_DEFAULT_BANNED_SUBNETS": "false"}
    log = (tmp_path / "label-studio.log").open("w")
    server = subprocess.Popen([EXECUTABLE, "start", "--no-browser", "-p", str(port), "--username", "admin@lab.example",
                               "--password", "Secret-pass-123", "--user-token", TOKEN], env=env, stdout=log,
                              stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                return httpx.get(url + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 240, "Label Studio to start", interval=1.0)
        # New organisations take only personal access tokens; the test's fixed token is a legacy one.
        with sqlite3.connect(base / "label_studio.sqlite3") as db:
            db.execute("UPDATE jwt_auth_jwtsettings SET legacy_api_tokens_enabled = 1")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_label_studio_gets_predictions_and_sends_annotations_back(tmp_path, label_studio):
    from label_studio_sdk import LabelStudio

    users = Users.parse(f"{ADMIN}:{PASSWORD}:admin")
    with served(tmp_path / "data", small_options(), users=users) as (_, url, studio):
        with studio.store() as store:
            export_tasks(store, tmp_path / "tasks.json")
            config = label_config(store.cultivars())
        tasks = [{"data": t["data"]} for t in json.loads((tmp_path / "tasks.json").read_text(encoding="utf-8"))[:5]]
        ls = LabelStudio(base_url=label_studio, api_key=TOKEN)
        project = ls.projects.create(title="Leaf cultivars", label_config=config)
        ls.projects.import_tasks(id=project.id, request=tasks)
        backend = ls.ml.create(project=project.id, url=url.rstrip("/") + "/ml", title="ILA Studio",
                               auth_method="BASIC_AUTH", basic_auth_user=ADMIN, basic_auth_pass=PASSWORD)  # fmt: skip
        serving = f"v{studio.models.version_id}"
        assert backend.model_version == serving, backend

        ls.actions.create(id="retrieve_tasks_predictions", project=project.id,
                          selected_items={"all": True, "excluded": []})  # fmt: skip
        predictions = list(ls.predictions.list(project=project.id))
        assert len(predictions) == len(tasks)
        with studio.store() as store:
            for p in predictions:
                sha = ls.tasks.get(id=p.task).data["sha256"]
                best = store.latest_prediction(store.image_by_sha256(sha)["id"], studio.models.version_id)["topk"][0]
                assert p.model_version == serving and p.score == pytest.approx(best["prob"], abs=1e-6)
                assert p.result[0]["value"]["choices"] == [best["label"]]

        # Label Studio made a project webhook for the backend; it needs the same Basic credentials.
        hook = next(h for h in ls.webhooks.list(project=project.id) if h.url.endswith("/ml/webhook"))
        basic = base64.b64encode(f"{ADMIN}:{PASSWORD}".encode()).decode()
        ls.webhooks.update(id=hook.id, headers={"Authorization": f"Basic {basic}"})

        task = next(iter(ls.tasks.list(project=project.id)))
        with studio.store() as store:
            image = store.image_by_sha256(task.data["sha256"])
            other = next(c for c in store.cultivars() if c != image["label"])
        annotation = ls.annotations.create(id=task.id, result=[{"from_name": "cultivar", "to_name": "image",
                                                                "type": "choices", "value": {"choices": [other]}}])

        def recorded() -> dict | None:
            with studio.store() as store:
                event = store.label_history(image["id"])[-1]
            return event if event["client_event_id"].startswith(f"labelstudio:{annotation.id}@") else None

        event = wait_for(recorded, 30, "the annotation webhook to be recorded")
        assert (event["label"], event["source"], event["user"]) == (other, "expert", "labelstudio-user-1")
