"""The web app end to end over its HTTP API: seed, train, predict, correct, retrain, promote, roll back.

One app (tiny random ViT, three synthetic cultivars) is launched per module on a free loopback port and
driven with ``gradio_client``, the way a script or another tool would use it.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from pathlib import Path

import gradio as gr
import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from ui_support import fn_index, raw_queue_call, served, small_options, wait_for, wait_for_job

from ila_core.config import AppConfig
from ila_core.data.synthetic import SyntheticConfig, generate
from ila_core.ui import Studio, build_app, launch_settings, queue_settings
from ila_core.ui.launch import DELETE_CACHE


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """A launched studio whose first (seeded) training job has finished."""
    data_dir = tmp_path_factory.mktemp("studio")
    options = small_options(import_roots=(tmp_path_factory.mktemp("incoming"),))
    with served(data_dir, options) as (demo, url, studio):
        yield demo, url, studio


@pytest.fixture(scope="module")
def client(app):
    """A gradio_client connected to the app (closed in finally)."""
    c = Client(app[1], verbose=False)
    try:
        yield c
    finally:
        c.close()


_FRESH = itertools.count(500)  # image indices beyond the demo set's: every leaf is new to the store
LONG_JOB = 2000  # epochs: a retrain that stays running until the test cancels it


@pytest.fixture
def leaf(tmp_path):
    """Write a synthetic leaf PNG not in the store and return its path."""
    _, image = next(generate(SyntheticConfig(num_cultivars=3, image_size=96, seed=7), 1, start_index=next(_FRESH)))
    path = tmp_path / f"leaf-{uuid.uuid4().hex[:8]}.png"
    image.save(path)
    return path


def _events(studio: Studio, client_event_id: str) -> list[dict]:
    with studio.store() as store:
        return [e for e in store.label_history() if e["client_event_id"] == client_event_id]


def _predict(client: Client, path: Path) -> dict:
    return client.predict(handle_file(str(path)), api_name="/predict")


def test_build_app_constructs_without_launching(tmp_path, monkeypatch):
    """build_app on an empty data dir returns Blocks with the named API endpoints, nothing launched."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "unused"))  # restored after: the module app keeps its own
    config = AppConfig(data_dir=tmp_path / "data")
    with Studio.open(config, small_options(start_worker=False, seed_demo=False)) as studio:
        demo = build_app(config, studio=studio)
    names = {d.get("api_name") for d in demo.config["dependencies"]}
    assert isinstance(demo, gr.Blocks) and not demo.is_running
    assert {"predict", "correct", "undo", "train", "cancel", "promote", "rollback", "job", "versions"} <= names


def test_first_start_seeds_demo_set_and_serves_trained_version(app):
    """A fresh data dir gets labelled train/holdout images, a pool, and a served, active model version."""
    _, _, studio = app
    with studio.store() as store:
        assert store.count_images(split="train") == 18 and store.count_images(split="holdout") == 6
        assert store.count_images(split="pool") == 6
        active = store.active_version()
    assert active is not None and studio.models.version_id == active["id"]


def test_predict_returns_topk_from_the_serving_version(client, app, leaf):
    """/predict stores the upload and answers top-k probabilities summing to at most 1, best first."""
    out = _predict(client, leaf)
    probs = [t["prob"] for t in out["top_k"]]
    assert out["version_id"] == app[2].models.version_id and not out["duplicate"]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-4)


def test_predict_same_bytes_twice_is_a_duplicate(client, leaf):
    """Uploading the same file again returns the same image id, marked duplicate."""
    first, second = _predict(client, leaf), _predict(client, leaf)
    assert second["image_id"] == first["image_id"] and second["duplicate"]


def test_correct_stores_one_event_per_client_event_id(client, app, leaf):
    """A resubmitted correction (same client_event_id) stores exactly one event (CON-04)."""
    image_id = _predict(client, leaf)["image_id"]
    label = client.predict(api_name="/cultivars")[1]
    cid = f"test:{uuid.uuid4().hex}"
    first = client.predict(image_id, label, cid, api_name="/correct")
    again = client.predict(image_id, label, cid, api_name="/correct")
    assert first["created"] and not again["created"] and first["event_id"] == again["event_id"]
    assert len(_events(app[2], cid)) == 1


def test_undo_restores_the_previous_label_as_a_new_event(client, app, leaf):
    """Undo appends an event and the image's label goes back to the one before."""
    image_id = _predict(client, leaf)["image_id"]
    names = client.predict(api_name="/cultivars")
    client.predict(image_id, names[0], api_name="/correct")
    client.predict(image_id, names[1], api_name="/correct")
    out = client.predict(image_id, api_name="/undo")
    kinds = [e["kind"] for e in client.predict(image_id, api_name="/label_history")]
    assert out["current"] == names[0] and kinds == ["label", "label", "undo"]


@pytest.mark.parametrize(
    "label",
    ["Not-A-Cultivar", "", "x" * 10_000, "<img src=x onerror=alert(1)>", '=HYPERLINK("http://evil")'],
    ids=["unknown", "empty", "10kB", "html", "formula"],
)
def test_correction_with_a_bad_label_is_refused_without_an_event(client, app, leaf, label):
    """Labels outside the cultivar list are refused with a clear message and no event row (API-08)."""
    image_id = _predict(client, leaf)["image_id"]
    with app[2].store() as store:
        before = store.last_event_id()
    with pytest.raises(AppError) as err:
        client.predict(image_id, label, api_name="/correct")
    with app[2].store() as store:
        assert store.last_event_id() == before
    assert "<img" not in str(err.value) and "Traceback" not in str(err.value)


def test_correction_for_an_unknown_image_is_refused_without_an_event(client, app):
    """An unknown image id gets a clear error naming the problem and writes nothing (API-09)."""
    label = client.predict(api_name="/cultivars")[0]
    with app[2].store() as store:
        before = store.last_event_id()
    with pytest.raises(AppError, match="unknown image"):
        client.predict(987654, label, api_name="/correct")
    with app[2].store() as store:
        assert store.last_event_id() == before


@pytest.mark.parametrize("target", ["outside", "database"])
def test_file_outside_the_upload_cache_is_refused(app, tmp_path, target):
    """A FileData payload pointing outside Gradio's upload cache is refused without naming paths (API-10)."""
    _, url, studio = app
    secret = tmp_path / "secret.png"
    next(generate(SyntheticConfig(num_cultivars=3, image_size=96), 1, start_index=900))[1].save(secret)
    path = secret if target == "outside" else studio.db_path
    with studio.store() as store:
        before = store.count_images()
    payload = {"path": str(path), "meta": {"_type": "gradio.FileData"}, "orig_name": "x.png"}
    with httpx.Client() as http:
        msg = raw_queue_call(url, fn_index(url, "predict", http), [payload], http)
    error = str(msg.get("output"))
    assert msg.get("success") is False and "File refused" in error  # one generic refusal, no server paths
    assert str(path) not in error and "blocked_paths" not in error and str(studio.data_dir) not in error
    with studio.store() as store:
        assert store.count_images() == before


def test_unexpected_handler_error_shows_a_reference_not_a_traceback(client, app, leaf, monkeypatch):
    """A non-gr.Error exception reaches the user as a generic message with a reference, no paths (API-13)."""

    def boom(*args, **kwargs):
        raise RuntimeError("failure in /srv/secret/ila.db: SELECT * FROM label_events")

    monkeypatch.setattr(app[2].models, "predict", boom)
    with pytest.raises(AppError) as err:
        _predict(client, leaf)
    text = str(err.value)
    assert "Something went wrong (ref " in text and "/srv/secret" not in text and "SELECT" not in text


def test_launch_settings_are_the_secure_defaults(app):
    """No share link, capped uploads, data folders blocked, nothing allowed, monitoring off, bounded queue (API-12)."""
    demo, _, studio = app
    settings = launch_settings(studio.config, studio)
    blocked = set(settings["blocked_paths"])
    assert settings["share"] is False and settings["show_error"] is True and settings["allowed_paths"] == []
    assert settings["max_file_size"] and settings["enable_monitoring"] is False and settings["mcp_server"] is False
    assert {str(studio.db_path), str(studio.data_dir / "adapters"), str(studio.data_dir / "images")} <= blocked
    assert settings["run_history"] is False and settings["strict_cors"] is True
    assert queue_settings(studio.config)["max_size"] == studio.config.queue_size
    assert (
        demo.share is False and demo.max_file_size and demo.allowed_paths == [] and set(demo.blocked_paths) == blocked
    )
    assert demo._queue.max_size == studio.config.queue_size and demo.show_error is True
    assert demo.delete_cache == DELETE_CACHE


def test_stored_data_is_never_served(app):
    """GET /gradio_api/file= on the database or a stored image is refused (API-01/02)."""
    _, url, studio = app
    with studio.store() as store:
        image = store.images(limit=1)[0]
    targets = [studio.db_path, studio.data_dir / "images" / image["rel_path"]]
    with httpx.Client() as http:
        codes = [http.get(f"{url.rstrip('/')}/gradio_api/file={t}").status_code for t in targets]
    assert codes == [403, 403]


def test_retrain_runs_to_completion_and_reports_progress(client, app):
    """/train queues a job the in-app worker finishes; /job shows it succeeded with a new version."""
    versions_before = {v["id"] for v in client.predict(api_name="/versions")}
    out = client.predict(api_name="/train")
    job = wait_for_job(app[2], out["job_id"])
    seen = Client(app[1], verbose=False)  # a "refreshed page": a new session sees the same job state
    try:
        status = seen.predict(out["job_id"], api_name="/job")
    finally:
        seen.close()
    assert job["status"] == "succeeded" and status["status"] == "succeeded"
    assert status["result_version_id"] not in versions_before and status["progress"]["phase"] == "eval"


def test_second_train_request_is_answered_already_running(client, app):
    """While a job is live, another /train is refused with "already running" and no second job (CON-08)."""
    first = client.predict(LONG_JOB, 30.0, api_name="/train")
    try:
        with pytest.raises(AppError, match="already running"):
            client.predict(api_name="/train")
        with app[2].store() as store:
            live = [j for j in store.jobs(limit=5) if j["status"] in ("queued", "running")]
        assert [j["id"] for j in live] == [first["job_id"]]
    finally:
        with app[2].store() as store:
            store.request_cancel(first["job_id"])
        wait_for_job(app[2], first["job_id"])


def test_promote_and_rollback_switch_the_serving_version(client, app):
    """Promote serves the chosen version; rollback returns to the one active before (both recorded)."""
    studio = app[2]
    if len(client.predict(api_name="/versions")) < 2:
        wait_for_job(studio, client.predict(api_name="/train")["job_id"])
    versions = client.predict(api_name="/versions")
    active = next(v["id"] for v in versions if v["status"] == "active")
    other = next(v["id"] for v in versions if v["id"] != active)
    client.predict(other, api_name="/promote")
    assert studio.models.version_id == other
    out = client.predict(api_name="/rollback")
    assert out["active"] == active and studio.models.version_id == active
    with studio.store() as store:
        reasons = [e["action"] for e in store.version_history()][-2:]
    assert reasons == ["promote", "rollback"]


def test_concurrent_corrections_while_training_are_each_stored_once(app, leaf):
    """20 clients x 5 corrections during a training job: every event stored exactly once (CON-02)."""
    _, url, studio = app
    main = Client(url, verbose=False)
    try:
        image_id = _predict(main, leaf)["image_id"]
        names = main.predict(api_name="/cultivars")
        job_id = main.predict(LONG_JOB, 30.0, api_name="/train")["job_id"]
    finally:
        main.close()
    wait_for(lambda: studio.worker.busy, 30, "the training job to start")
    ids = [[f"con02:{c}:{i}:{uuid.uuid4().hex[:6]}" for i in range(5)] for c in range(20)]
    errors: list[BaseException] = []

    def user(mine: list[str]) -> None:
        c = Client(url, verbose=False)
        try:
            for n, cid in enumerate(mine):
                c.predict(image_id, names[n % len(names)], cid, api_name="/correct")
            c.predict(image_id, names[0], mine[0], api_name="/correct")  # a retry of an earlier submit
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=user, args=(mine,)) for mine in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with studio.store() as store:
        stored = [e["client_event_id"] for e in store.label_history(image_id)]
        was_training = store.job(job_id)["status"] == "running"
        store.request_cancel(job_id)
        ok = store.integrity_check()
    wait_for_job(studio, job_id)
    wanted = {cid for mine in ids for cid in mine}
    assert not errors and was_training and ok == "ok"
    assert sorted(c for c in stored if c in wanted) == sorted(wanted)


def test_exemplars_come_back_the_same_on_a_second_look(app):
    """The nearest confirmed images of each candidate do not vanish once their embeddings are cached."""
    from ila_core.ui.panel import exemplar_items, image_facts

    studio = app[2]
    with studio.store() as store:
        image_id = store.images(split="pool")[0]["id"]
    facts = image_facts(studio, image_id)
    first, second = exemplar_items(studio, facts), exemplar_items(studio, facts)
    assert len(first) >= 2 and [c for _, c in first] == [c for _, c in second]


@pytest.mark.parametrize("method", ["gradcam", "rollout", "contrast"])
def test_explanation_shows_the_whole_photo(app, method):
    """Each explanation gives a photo/overlay pair of the same size at the photo's aspect ratio (no crop) and an
    off-leaf share in [0, 1]."""
    from ila_core.ui.panel import explain_view, image_facts

    studio = app[2]
    with studio.store() as store:
        image_id = store.images(split="holdout")[0]["id"]
    (view, over), caption, outside = explain_view(studio, image_facts(studio, image_id), method)
    assert view.size == over.size == (420, 420) and 0.0 <= outside <= 1.0 and "token grid" in caption


def test_overlay_in_window_keeps_a_tall_photo_whole():
    """A 1:2 photo stays 1:2; only the model's window is coloured, the border is dimmed."""
    import numpy as np
    from PIL import Image

    from ila_core.explain import overlay_in_window

    photo = Image.new("RGB", (50, 100), (200, 200, 200))
    out = overlay_in_window(photo, np.ones((4, 4), np.float32), (0.25, 0.25, 0.75, 0.75), dim=0.5)
    pixels = np.asarray(out)
    assert out.size == (50, 100) and tuple(pixels[2, 2]) == (100, 100, 100) and tuple(pixels[50, 25]) != (100, 100, 100)


def test_the_explanation_path_is_warm_once_a_model_serves(app):
    """After the first model loads, the explainer is built in the background before anyone asks for a heatmap."""
    from ui_support import wait_for

    studio = app[2]
    wait_for(lambda: studio._warmer is None or not studio._warmer.is_alive(), 60, "the first background pass")
    with studio.models._explain_lock:
        studio.models._explainer = None  # as if the model had just switched
    studio.follow_model(changed=True)
    assert wait_for(lambda: studio.models.explainer_ready, 60, "the explainer to be warmed")


def _scored_by_serving_model(studio: Studio) -> None:
    """Wait until the background scorer has scored every image for the served version."""
    def done() -> bool:
        with studio.store() as store:
            return store.count_scored(studio.models.version_id) == store.count_images()

    wait_for(done, 60, "background scoring of every image")


def test_review_queue_puts_the_smallest_margin_first(app):
    """The margin queue is sorted ascending by top-1 minus top-2 probability, over every scored image."""
    from ila_core.ui.review import review_page

    _scored_by_serving_model(app[2])
    items, page = review_page(app[2], sort="margin", cultivar=None, split=None, version="serving")
    margins = [i["margin"] for i in items]
    assert margins and margins == sorted(margins) and page.total == page.scored


def test_queue_endpoint_pages_every_sort(client, app):
    """/queue answers {"items": [{"image_id": ...}], "total", "scored"}; offset moves to the next page."""
    _scored_by_serving_model(app[2])
    with app[2].store() as store:
        stored = store.count_images()
    for sort in ("unlabelled", "margin", "disagree", "unsure", "newest", "unlike"):
        out = client.predict(sort, 5, 0, api_name="/queue")
        assert set(out) >= {"items", "total", "scored"} and out["scored"] == stored, sort
        assert len(out["items"]) == min(5, out["total"]) and all("image_id" in i for i in out["items"]), sort
    first, second = (client.predict("newest", 5, offset, api_name="/queue") for offset in (0, 5))
    ids = [i["image_id"] for i in first["items"] + second["items"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 10
    with pytest.raises(AppError, match="Unknown sort order"):
        client.predict("sideways", 5, 0, api_name="/queue")


@pytest.mark.parametrize("fmt", ["csv", "history", "labelstudio", "imagefolder"])
def test_export_lands_in_the_upload_cache_as_one_download(app, fmt):
    """Each export is one non-empty file inside Gradio's cache folder (never the data folders)."""
    from ila_core.ui.data import run_export

    studio = app[2]
    path = run_export(studio, fmt)
    assert path.is_file() and path.stat().st_size > 0 and studio.temp_dir in path.parents


def test_counts_table_adds_up_per_cultivar(app):
    """Counts per cultivar and split sum to the labelled total shown beside them."""
    from ila_core.ui.data import counts_table

    rows, line = counts_table(app[2])
    with app[2].store() as store:
        labelled = store.count_images(labelled=True)
    assert sum(r[4] for r in rows) == labelled and f"{labelled} with a cultivar label" in line


def test_server_folder_import_reports_every_file(app):
    """The Data tab's server-path import (as the local admin) reports one line per file, bad files included."""
    _, url, studio = app
    root = studio.options.import_roots[0] / "batch-1"
    folder = root / "train" / "Amber-01"
    folder.mkdir(parents=True)
    for n, (_, image) in enumerate(generate(SyntheticConfig(num_cultivars=3, image_size=96), 2, start_index=800)):
        image.save(folder / f"a{n}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    args = [str(root), "Detect automatically", "Keep the layout's split"]
    with httpx.Client() as http:
        msg = raw_queue_call(url, fn_index(url, "ui_import_path", http), args, http)
    report, summary = msg["output"]["data"][:2]
    statuses = sorted(row[1] for row in report["data"])
    assert msg["success"] and statuses == ["imported"] * 6 + ["rejected"] and "6 imported" in summary


def test_version_comparison_lists_metrics_and_flipped_images(client, app):
    """Comparing two versions gives the metric table and stores both versions' holdout predictions."""
    from ila_core.ui.compare import diff_versions

    studio = app[2]
    if len(client.predict(api_name="/versions")) < 2:
        wait_for_job(studio, client.predict(api_name="/train")["job_id"])
    newest = client.predict(api_name="/versions")[0]["id"]
    diff = diff_versions(studio, newest)
    with studio.store() as store:
        holdout = store.images(split="holdout")
        stored = [store.latest_prediction(r["id"], diff.baseline["id"]) for r in holdout]
    assert [row[0] for row in diff.metrics][0] == "Top-1 accuracy" and diff.compared == len(holdout)
    assert all(p is not None for p in stored) and all(f["before"] != f["after"] for f in diff.flipped)


def test_large_server_import_runs_in_the_background(app, monkeypatch):
    """API-21: an import above the inline size runs as a background job (the request returns at once)."""
    import dataclasses

    _, url, studio = app
    monkeypatch.setattr(studio, "options", dataclasses.replace(studio.options, inline_import_files=2))
    root = studio.options.import_roots[0] / "batch-2" / "Amber-01"
    root.mkdir(parents=True)
    for n, (_, image) in enumerate(generate(SyntheticConfig(num_cultivars=3, image_size=96), 1, start_index=820)):
        image.save(root / f"b{n}.png")
    for n in range(3):
        (root / f"broken{n}.png").write_bytes(b"not an image")
    args = [str(root.parent), "Detect automatically", "Keep the layout's split"]
    with httpx.Client() as http:
        msg = raw_queue_call(url, fn_index(url, "ui_import_path", http), args, http)
    job = studio.imports.wait(timeout=60)
    assert msg["success"] and "started in the background" in msg["output"]["data"][1]
    statuses = [r.status for r in job.results]
    assert job.finished and job.error is None and job.done == job.total == 6
    assert statuses.count("imported") == 3 and statuses.count("rejected") == 3


def test_import_above_the_row_cap_is_refused_with_the_cap(app, monkeypatch):
    """API-21: a CSV listing more rows than the app's cap is refused with the cap; nothing is imported."""
    import dataclasses

    _, url, studio = app
    monkeypatch.setattr(studio, "options", dataclasses.replace(studio.options, inline_import_files=2,
                                                               max_import_files=3))  # fmt: skip
    root = studio.options.import_roots[0] / "batch-3"
    root.mkdir()
    (root / "list.csv").write_text("path,label\n" + "x.png,Amber-01\n" * 5)
    with studio.store() as store:
        before = store.count_images()
    args = [str(root / "list.csv"), "Detect automatically", "Keep the layout's split"]
    with httpx.Client() as http:
        msg = raw_queue_call(url, fn_index(url, "ui_import_path", http), args, http)
    with studio.store() as store:
        assert store.count_images() == before
    assert msg["success"] is False and "list.csv lists 5 files &gt; limit 3 per import" in msg["output"]["error"]


def test_unlike_the_confirmed_images_is_said_beside_the_prediction(app):
    """A picture that is no leaf scores below the store's own calibration; a demo leaf does not."""
    import numpy as np
    from PIL import Image

    from ila_core.ui.panel import flags_html, image_facts, load_full

    studio = app[2]
    with studio.store() as store:
        image_id = store.images(split="pool")[0]["id"]
    facts = image_facts(studio, image_id)
    leaf = studio.models.unlikeness(load_full(studio, facts), facts.sha256, exclude_image=image_id)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8))
    odd = studio.models.unlikeness(noise, "f" * 64)
    assert leaf.threshold is not None and not leaf.unusual
    assert odd.unusual and odd.similarity < leaf.similarity
    assert "Unlike the confirmed images" not in flags_html(studio, facts)


def test_review_sorts_by_how_unlike_the_confirmed_images(app):
    """The Review queue can put the images least like any confirmed one first."""
    from ila_core.ui.review import review_queue

    studio = app[2]
    _scored_by_serving_model(studio)
    wait_for(lambda: len(review_queue(studio, sort="unlike", cultivar=None, split=None, version=None,
                                      limit=500)) >= 10, 60, "similarities of the scored images")  # fmt: skip
    items = review_queue(studio, sort="unlike", cultivar=None, split=None, version=None, limit=500)
    sims = [i["similarity"] for i in items]
    assert len(items) >= 10 and sims == sorted(sims)


def test_promoting_a_worse_version_names_the_drop(app):
    """The Models tab asks before serving a version that is worse on the holdout, naming the metric drop."""
    from ila_core.ui.models import promotion_drop

    studio = app[2]
    with studio.store() as store:
        active = store.active_version()
        worse = store.add_model_version(path="adapters/worse.safetensors", sha256="e" * 64, manifest={},
                                        metrics={"top1": 0.0, "macro_f1": 0.0, "holdout_key": "other"},
                                        parent_id=None, snapshot_event_id=0, job_id=None)  # fmt: skip
    text = promotion_drop(studio, worse)
    assert text is not None and f"served v{active['id']}" in text and "holdout top-1 0.000" in text
    assert "different holdout" in text
    assert promotion_drop(studio, active["id"]) is None
