"""The HTTP API beyond labelling, driven with ``gradio_client`` on a launched app: typed answers in
``view_api()``, a pure predict and a batch predict that store nothing, imports (upload and server path) and
exports as endpoints."""

from __future__ import annotations

import csv
import io
import uuid
import zipfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from ui_support import served, small_options

from ila_core.data.synthetic import SyntheticConfig, generate

_FRESH = iter(range(900, 2000))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """A launched studio with one import root, serving its first model; yields (url, studio, root)."""
    root = tmp_path_factory.mktemp("incoming")
    options = small_options(import_roots=(root,))
    with served(tmp_path_factory.mktemp("studio"), options) as (_, url, studio):
        yield url, studio, root


@pytest.fixture(scope="module")
def client(app):
    c = Client(app[0], verbose=False)
    try:
        yield c
    finally:
        c.close()


def _leaf(folder: Path, name: str | None = None) -> Path:
    """A synthetic leaf PNG the store does not hold."""
    _, image = next(generate(SyntheticConfig(num_cultivars=3, image_size=96, seed=11), 1, start_index=next(_FRESH)))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"leaf-{uuid.uuid4().hex[:8]}.png")
    image.save(path)
    return path


def _counts(studio) -> tuple[int, int]:
    with studio.store() as store:
        return store.count_images(), store.last_event_id()


def test_every_public_endpoint_declares_its_answer(client):
    """No answer is typed Any: view_api shows the fields (e.g. /predict's image_id and top_k)."""
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    public = {name: info for name, info in endpoints.items() if not name.startswith("/ui_")}
    assert {"/predict", "/classify", "/classify_batch", "/import_files", "/import_path", "/import_status",
            "/export", "/queue", "/versions", "/job"} <= set(public)  # fmt: skip
    for name, info in public.items():
        python_type = info["returns"][0]["python_type"]["type"]
        assert "Any" not in python_type, (name, python_type)
    predict = endpoints["/predict"]["returns"][0]["type"]
    assert {"image_id", "duplicate", "version_id", "label", "top_k"} <= set(predict["properties"])
    assert predict["properties"]["top_k"]["items"]["properties"].keys() == {"label", "prob"}


def test_classify_answers_the_served_top_k_and_stores_nothing(client, app, tmp_path):
    url, studio, _ = app
    leaf = _leaf(tmp_path)
    before = _counts(studio)
    out = client.predict(handle_file(str(leaf)), api_name="/classify")
    assert out["status"] == "ok" and out["version_id"] == studio.models.version_id and out["image_id"] is None
    probs = [t["prob"] for t in out["top_k"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-4)
    assert _counts(studio) == before
    assert not list(studio.temp_dir.rglob(leaf.name))  # the upload is not kept in the cache either
    stored = client.predict(handle_file(str(leaf)), api_name="/predict")  # now store it: classify names it
    again = client.predict(handle_file(str(leaf)), api_name="/classify")
    assert again["image_id"] == stored["image_id"] and again["sha256"] == out["sha256"]
    assert again["top_k"] == out["top_k"]


def test_classify_batch_answers_each_file_in_order(client, app, tmp_path):
    _, studio, _ = app
    good, other = _leaf(tmp_path), _leaf(tmp_path)
    fake = tmp_path / "notes.png"
    fake.write_text("path,label\n/etc/passwd,Alpha\n")
    before = _counts(studio)
    out = client.predict([handle_file(str(p)) for p in (good, fake, other)], api_name="/classify_batch")
    assert [o["status"] for o in out] == ["ok", "rejected", "ok"]
    assert [o["file"] for o in out] == [good.name, fake.name, other.name]
    assert "notes.png" in out[1]["reason"] and out[1]["top_k"] == []
    assert all(len(o["top_k"]) == 3 for o in (out[0], out[2]))
    assert _counts(studio) == before
    with pytest.raises(AppError, match="Image refused"):
        client.predict(handle_file(str(fake)), api_name="/classify")


def test_import_files_stores_uploads_and_reports_duplicates(client, app, tmp_path):
    _, studio, _ = app
    leaves = [_leaf(tmp_path) for _ in range(2)]
    before = _counts(studio)[0]
    out = client.predict([handle_file(str(p)) for p in leaves], "train", api_name="/import_files")
    assert out["status"] == "done" and out["summary"]["imported"] == 2
    assert {r["split"] for r in out["results"]} == {"train"} and all(r["image_id"] for r in out["results"])
    assert _counts(studio)[0] == before + 2
    again = client.predict([handle_file(str(p)) for p in leaves], None, api_name="/import_files")
    assert again["summary"]["duplicate"] == 2 and _counts(studio)[0] == before + 2
    with pytest.raises(AppError, match="Unknown split"):
        client.predict([handle_file(str(leaves[0]))], "test", api_name="/import_files")


def test_import_path_reads_an_import_root_and_refuses_elsewhere(client, app, tmp_path):
    _, studio, root = app
    with studio.store() as store:
        cultivar = store.cultivars()[0]
    tree = root / "batch-1"
    for _ in range(2):
        _leaf(tree / cultivar)
    assert client.predict(api_name="/import_status")["status"] == "none"
    out = client.predict(str(tree), "imagefolder", None, api_name="/import_path")
    assert out["status"] == "done" and out["summary"]["imported"] == 2 and out["summary"]["labelled"] == 2
    assert {r["label"] for r in out["results"]} == {cultivar}
    before = _counts(studio)
    outside = tmp_path / "elsewhere"
    _leaf(outside / cultivar)
    with pytest.raises(AppError, match="Refused"):
        client.predict(str(outside), "auto", None, api_name="/import_path")
    with pytest.raises(AppError, match="Unknown layout"):
        client.predict(str(tree), "excel", None, api_name="/import_path")
    assert _counts(studio) == before


def test_export_endpoints_download_each_format(client, app):
    _, studio, _ = app
    labels = Path(client.predict("csv", None, api_name="/export"))
    rows = list(csv.DictReader(io.StringIO(labels.read_text(encoding="utf-8"))))
    assert rows and {"label", "split"} <= set(rows[0]) and len(rows) == _counts(studio)[0]
    bundle = Path(client.predict("labelstudio", "http://files.lab.example/", api_name="/export"))
    with zipfile.ZipFile(bundle) as z:
        assert {"labelstudio.json", "label_config.xml"} <= set(z.namelist())
        assert b"http://files.lab.example/images/" in z.read("labelstudio.json")
    with pytest.raises(AppError, match="Unknown export format"):
        client.predict("parquet", None, api_name="/export")
