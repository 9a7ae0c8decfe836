"""The Label Studio ML backend served under ``/ml`` by the launched app: health, setup, predict, webhook.

Requests are Label Studio's own shapes (``tests/fixtures/label_studio/``, written after its documented
webhook and ML backend payloads); predictions are checked with the real ``label-studio-sdk``
(``LabelInterface.validate_prediction`` and the ``PredictionValue`` model the ML backend SDK answers with).
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from ui_support import launched, served, small_options, wait_for, wait_for_job

from ila_core.data.formats.label_studio import export_tasks, label_config
from ila_core.ui.auth import Users

sdk = pytest.importorskip("label_studio_sdk")

FIXTURES = Path(__file__).parent / "fixtures" / "label_studio"


def _fixture(name: str, **fill: Any) -> dict[str, Any]:
    """A recorded payload with its ``"__NAME__"`` placeholders replaced (JSON values, so tasks may be lists)."""
    text = (FIXTURES / name).read_text(encoding="utf-8")
    for key, value in fill.items():
        text = text.replace(f'"__{key.upper()}__"', json.dumps(value))
    return json.loads(text)


def _stamp(minutes: float = 0.0) -> str:
    return (datetime.now(timezone.utc) + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """A launched studio (no login) serving its first model; yields (url, studio, tasks, label config)."""
    data_dir = tmp_path_factory.mktemp("ml-backend")
    with served(data_dir, small_options()) as (_, url, studio):
        out = tmp_path_factory.mktemp("ls") / "tasks.json"
        with studio.store() as store:
            export_tasks(store, out)
            config = label_config(store.cultivars())
        tasks = json.loads(out.read_text(encoding="utf-8"))
        yield url.rstrip("/"), studio, tasks, config


def _counts(studio) -> tuple[int, int]:
    with studio.store() as store:
        return store.count_images(), store.last_event_id()


def test_health_and_setup_answer_the_served_version(app):
    url, studio, _, config = app
    serving = f"v{studio.models.version_id}"
    for path in ("/ml", "/ml/health"):
        answer = httpx.get(url + path, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"status": "UP", "model_class": "ILAStudio", "model_version": serving}
    answer = httpx.post(url + "/ml/setup", json=_fixture("setup_request.json", label_config=config), timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"model_version": serving}
    assert serving in httpx.get(url + "/ml/versions", timeout=30).json()["versions"]


def test_setup_refuses_a_config_without_a_cultivar_choice(app):
    url, _, _, _ = app
    boxes = '<View><Image name="image" value="$image"/><RectangleLabels name="box" toName="image"/></View>'
    for schema, named in ((boxes, "no <Choices> over an <Image>"), ("<View>", "not valid XML"), (None, "'schema'")):
        answer = httpx.post(url + "/ml/setup", json={"project": "7.1", "schema": schema}, timeout=30)
        assert answer.status_code == 400 and named in answer.json()["detail"], answer.text


def test_predict_answers_every_task_in_order_with_sdk_valid_predictions(app):
    """Each exported task gets the served top-1 with its probability; a foreign task gets []; nothing stored."""
    from label_studio_sdk.label_interface import LabelInterface
    from label_studio_sdk.label_interface.objects import PredictionValue

    url, studio, tasks, config = app
    foreign = {"id": 9999, "data": {"image": "/data/upload/7/0f3a2b-leaf.png"}}
    sent = tasks[:6] + [foreign]
    before = _counts(studio)
    answer = httpx.post(url + "/ml/predict", json=_fixture("predict_request.json", tasks=sent, label_config=config),
                        timeout=120)  # fmt: skip
    assert answer.status_code == 200, answer.text
    body = answer.json()
    serving = studio.models.version_id
    assert body["model_version"] == f"v{serving}"
    results = body["results"]
    assert len(results) == len(sent) and results[-1] == []
    interface = LabelInterface(config)
    with studio.store() as store:
        for task, predictions in zip(sent[:-1], results[:-1], strict=True):
            assert len(predictions) == 1
            prediction = predictions[0]
            assert interface.validate_prediction(prediction, return_errors=True) == []
            PredictionValue(**prediction)
            stored = store.latest_prediction(task["id"], serving)["topk"][0]
            assert prediction["result"][0]["value"]["choices"] == [stored["label"]]
            assert prediction["score"] == pytest.approx(stored["prob"], abs=1e-6)
            assert prediction["model_version"] == f"v{serving}"
    assert _counts(studio) == before  # no image, no label event


def test_predict_uses_the_projects_own_control_names(app):
    url, _, tasks, _ = app
    config = ('<View><Image name="leaf" value="$image"/><Choices name="variety" toName="leaf">'
              '<Choice value="A"/></Choices></View>')  # fmt: skip
    answer = httpx.post(url + "/ml/predict", json={"tasks": tasks[:1], "label_config": config}, timeout=60)
    result = answer.json()["results"][0][0]["result"][0]
    assert (result["from_name"], result["to_name"]) == ("variety", "leaf")


def _annotation_event(task: dict[str, Any], label: str, config: str, stamp: str, action: str = "") -> dict:
    payload = _fixture("webhook_annotation_created.json", label=label, stamp=stamp, sha256=task["data"]["sha256"],
                       rel_path=task["data"]["image"].split("?d=", 1)[1], label_config=config)  # fmt: skip
    payload["task"]["id"] = task["id"]
    if action:
        payload["action"] = action
    return payload


def test_webhook_records_an_annotation_once_as_an_attributed_undoable_correction(app):
    url, studio, tasks, config = app
    task = next(t for t in tasks if t["annotations"])
    current = task["annotations"][0]["result"][0]["value"]["choices"][0]
    with studio.store() as store:
        other = next(c for c in store.cultivars() if c != current)
    payload = _annotation_event(task, other, config, _stamp(1))
    answer = httpx.post(url + "/ml/webhook", json=payload, timeout=30)
    assert answer.status_code == 201, answer.text
    assert answer.json()["status"] == "imported" and answer.json()["image_id"] == task["id"]
    with studio.store() as store:
        event = store.label_history(task["id"])[-1]
        assert (event["label"], event["user"], event["source"]) == (other, "labelstudio-user-3", "expert")
        last = store.last_event_id()
    again = httpx.post(url + "/ml/webhook", json=payload, timeout=30)
    assert again.status_code == 200 and again.json()["status"] == "duplicate", again.text
    assert _counts(studio)[1] == last  # the retried webhook stored nothing
    # The annotator changes their mind in Label Studio: the update is recorded too.
    update = _annotation_event(task, current, config, _stamp(2), action="ANNOTATION_UPDATED")
    assert httpx.post(url + "/ml/webhook", json=update, timeout=30).json()["status"] == "imported"
    with studio.store() as store:
        assert store.current_label(task["id"])["label"] == current


def test_webhook_events_that_are_not_applied_say_so(app):
    url, studio, tasks, config = app
    before = _counts(studio)
    deleted = httpx.post(url + "/ml/webhook", json=_fixture("webhook_annotations_deleted.json"), timeout=30)
    assert deleted.status_code == 200 and deleted.json()["status"] == "ignored"
    assert "append-only" in deleted.json()["reason"]
    other = httpx.post(url + "/ml/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 7}}, timeout=30)
    assert other.json()["status"] == "Unknown event"
    unknown = _annotation_event(tasks[0], "Not-A-Known-Cultivar", config, _stamp(3))
    unknown["task"]["data"] = {"image": "/data/upload/7/foreign.png"}
    refused = httpx.post(url + "/ml/webhook", json=unknown, timeout=30)
    assert refused.status_code == 422 and "no stored image matches" in refused.json()["reason"]
    assert _counts(studio) == before


def test_bad_requests_are_refused_with_the_problem_named(app):
    url, studio, _, _ = app
    before = _counts(studio)
    as_json = {"content-type": "application/json"}
    cases = [
        (httpx.post(url + "/ml/predict", content=b"not json", headers=as_json, timeout=30), 400, "not JSON"),
        (httpx.post(url + "/ml/predict", json={"tasks": "all"}, timeout=30), 400, "'tasks' is a list"),
        (httpx.post(url + "/ml/predict", json={"tasks": [{}] * 1001}, timeout=30), 413, "at most 1000"),
        (httpx.post(url + "/ml/predict", content=b" " * (17 * 1024 * 1024), headers=as_json, timeout=60), 413,
         "over 16 MiB"),
        (httpx.post(url + "/ml/webhook", json={"annotation": {}}, timeout=30), 400, "'action'"),
        (httpx.post(url + "/ml/webhook", json={"action": "ANNOTATION_CREATED"}, timeout=30), 400, "'annotation'"),
        (httpx.get(url + "/ml/predict", timeout=30), 405, "no GET"),
        (httpx.get(url + "/ml/train", timeout=30), 404, "no GET"),
    ]
    for answer, status, named in cases:
        assert answer.status_code == status and named in answer.json()["detail"], (status, answer.text)
    assert _counts(studio) == before
    assert httpx.get(url + "/", timeout=30).status_code == 200  # Gradio's own routes are untouched


def test_a_web_page_cannot_post_to_the_backend(app):
    """Without a login, a cross-site page must not make a visitor's browser record a correction or start training:
    a foreign Origin is refused, and so is a body that is not declared JSON (what a page may send unpreflighted)."""
    url, studio, tasks, config = app
    before = _counts(studio)
    event = _annotation_event(next(t for t in tasks if t["annotations"]), "Anything", config, _stamp(5))
    page = httpx.post(url + "/ml/webhook", json=event, headers={"origin": "http://evil.example"}, timeout=30)
    assert page.status_code == 403 and "not from web pages" in page.json()["detail"]
    form = httpx.post(url + "/ml/webhook", content=json.dumps({"action": "START_TRAINING"}),
                      headers={"content-type": "text/plain"}, timeout=30)  # fmt: skip
    assert form.status_code == 415 and "application/json" in form.json()["detail"]
    assert _counts(studio) == before
    with studio.store() as store:
        assert store.active_job() is None


def test_start_training_webhook_queues_a_retrain(app):
    url, studio, _, _ = app
    answer = httpx.post(url + "/ml/webhook", json={"action": "START_TRAINING", "project": {"id": 7}}, timeout=30)
    assert answer.status_code == 201 and answer.json()["status"] == "queued", answer.text
    job_id = answer.json()["job_id"]
    busy = httpx.post(url + "/ml/webhook", json={"action": "START_TRAINING"}, timeout=30)
    assert busy.status_code in (201, 409)  # 409 "already running" unless the tiny job finished in between
    assert wait_for_job(studio, job_id, timeout=120)["status"] == "succeeded"


def _basic(name: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def test_with_users_every_route_needs_basic_auth_and_webhooks_an_admin(tmp_path):
    users = Users.parse("ana:correct-horse:admin\nbo:battery-staple")
    options = small_options(start_worker=False, seed_demo=False)
    with launched(tmp_path / "data", options, users=users) as (_, url, studio):
        url = url.rstrip("/")
        anonymous = httpx.get(url + "/ml/health", timeout=30)
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Basic")
        assert httpx.get(url + "/ml/health", headers=_basic("bo", "wrong-one"), timeout=30).status_code == 401
        assert httpx.get(url + "/ml/health", headers=_basic("bo", "battery-staple"), timeout=30).json()["status"] == "UP"
        no_model = httpx.post(url + "/ml/predict", json={"tasks": []}, headers=_basic("bo", "battery-staple"),
                              timeout=30)  # fmt: skip
        assert no_model.status_code == 503 and no_model.json()["detail"]
        event = {"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "result": []}, "task": {"id": 1, "data": {}}}
        member = httpx.post(url + "/ml/webhook", json=event, headers=_basic("bo", "battery-staple"), timeout=30)
        assert member.status_code == 403 and "admin" in member.json()["detail"]
        admin = httpx.post(url + "/ml/webhook", json=event, headers=_basic("ana", "correct-horse"), timeout=30)
        assert admin.status_code == 422  # past the role check: no stored image matches the task
        # Wrong passwords are throttled like the browser login: after the free failures, even the right one waits.
        for _ in range(6):
            httpx.get(url + "/ml/health", headers=_basic("ana", "guess"), timeout=30)
        throttled = httpx.get(url + "/ml/health", headers=_basic("ana", "correct-horse"), timeout=30)
        assert throttled.status_code == 429 and "retry-after" in throttled.headers
        assert wait_for(lambda: studio.logins.retry_after("ana", "127.0.0.1") > 0, 1, "the throttle")
