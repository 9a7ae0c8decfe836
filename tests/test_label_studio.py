"""Label Studio both ways, checked with the real ``label-studio-sdk``: our label_config.xml and tasks validate
against its LabelInterface; a Label Studio JSON export (written after the documented task format) and the
JSON_MIN and CSV exports that the SDK's own Converter derives from it import as undoable, attributed,
idempotent correction events."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ila_core.cli import main
from ila_core.data.exporters import export
from ila_core.data.importers import detect_layout, import_path, summarise
from ila_core.store import LabelStore

sdk = pytest.importorskip("label_studio_sdk")

_seed = iter(range(30_000, 40_000))


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(next(_seed))
    Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(path)
    return path


def _stamp(minutes: float) -> str:
    """A Label Studio timestamp (UTC, 'Z') ``minutes`` from now."""
    return (datetime.now(timezone.utc) + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


@pytest.fixture
def exported(tmp_path) -> tuple[Path, Path, list[dict]]:
    """A data dir (Alpha x2, Beta x2, one unlabelled) and its Label Studio export; returns (data, json, tasks)."""
    tree = tmp_path / "tree"
    for i, label in enumerate(["Alpha", "Alpha", "Beta", "Beta"]):
        _png(tree / "train" / label / f"{i}.png")
    _png(tree / "train" / "loose.png")
    data = tmp_path / "data"
    list(import_path(tree, data))
    out = tmp_path / "ls" / "tasks.json"
    summary = export(data, out, fmt="labelstudio")
    assert summary["tasks"] == 5 and Path(summary["label_config"]) == tmp_path / "ls" / "label_config.xml"
    return data, out, json.loads(out.read_text(encoding="utf-8"))


def test_label_config_and_tasks_validate_with_the_sdk(exported):
    """The config parses and validates; every exported annotation and prediction is valid under it."""
    from label_studio_sdk.label_interface import LabelInterface

    data, out, tasks = exported
    with LabelStore.open(data / "ila.db") as store:
        version = store.add_model_version(path="adapters/v1.safetensors", sha256="0" * 64, manifest={}, metrics={},
                                          parent_id=None, snapshot_event_id=store.last_event_id(), job_id=None)
        store.add_predictions(version, [(tasks[0]["id"], [("Beta", 0.75), ("Alpha", 0.25)])])
    export(data, out, fmt="labelstudio")
    tasks = json.loads(out.read_text(encoding="utf-8"))
    interface = LabelInterface((out.parent / "label_config.xml").read_text(encoding="utf-8"))
    interface.validate()
    assert sorted(interface.get_control("cultivar").labels) == ["Alpha", "Beta"]
    for task in tasks:
        assert task["data"]["image"].startswith("/data/local-files/?d=images/")
        for annotation in task["annotations"]:
            assert interface.validate_annotation(annotation)
        for prediction in task["predictions"]:
            assert interface.validate_prediction(prediction, return_errors=True) == []
    assert sum(len(t["predictions"]) for t in tasks) == 1


def test_image_url_prefix_option(exported, tmp_path, capsys):
    """`export --image-url-prefix` points data.image at another server; the path stays relative to the data dir."""
    data, _, _ = exported
    out = tmp_path / "other" / "tasks.json"
    code = main(["export", str(out), "--data-dir", str(data), "--format", "labelstudio", "--image-url-prefix",
                 "http://127.0.0.1:8081/", "--json"])  # fmt: skip
    assert code == 0 and json.loads(capsys.readouterr().out)["summary"]["tasks"] == 5
    images = [t["data"]["image"] for t in json.loads(out.read_text())]
    assert all(i.startswith("http://127.0.0.1:8081/images/") for i in images)


def _as_label_studio_exports(tasks: list[dict]) -> list[dict]:
    """What Label Studio's JSON export holds after annotators worked on our tasks: new task ids, our imported
    annotations with ids, and the annotators' own (one changed, one relabelled by another, one cancelled, one
    for the unlabelled image), plus a task of an image the store does not have."""
    before, after = _stamp(-60), _stamp(5)
    out = []
    by_label = {}
    for n, task in enumerate(tasks, start=1):
        label = task["annotations"][0]["result"][0]["value"]["choices"][0] if task["annotations"] else None
        by_label.setdefault(label, []).append(n - 1)
        annotations = [
            {**a, "id": 100 + n, "completed_by": 1, "created_at": before, "updated_at": before, "lead_time": 1.5,
             "ground_truth": False, "task": 1000 + n, "project": 7}
            for a in task["annotations"]
        ]
        out.append({"id": 1000 + n, "data": task["data"], "annotations": annotations, "predictions": [],
                    "project": 7, "created_at": before, "updated_at": before, "inner_id": n})  # fmt: skip

    def annotate(index: int, annotation_id: int, who, label: str, *, cancelled: bool = False) -> None:
        result = [{"id": f"r{annotation_id}", "from_name": "cultivar", "to_name": "image", "type": "choices",
                   "value": {"choices": [label]}, "origin": "manual"}]  # fmt: skip
        out[index]["annotations"].append({
            "id": annotation_id, "completed_by": who, "result": [] if cancelled else result,
            "was_cancelled": cancelled, "ground_truth": False, "created_at": after, "updated_at": after,
            "lead_time": 4.2, "task": out[index]["id"], "project": 7,
        })  # fmt: skip

    annotate(by_label["Alpha"][0], 501, {"id": 2, "email": "ana@example.org", "first_name": "Ana"}, "Beta")
    annotate(by_label["Beta"][0], 502, 3, "Alpha")
    annotate(by_label["Beta"][1], 503, 3, "Alpha", cancelled=True)
    annotate(by_label[None][0], 504, {"id": 2, "email": "ana@example.org"}, "Alpha")
    out.append({"id": 2000, "data": {"image": "/data/upload/7/3f2a9c1b-leaf.png"}, "annotations": [
        {"id": 505, "completed_by": 3, "result": [{"from_name": "cultivar", "to_name": "image", "type": "choices",
                                                   "value": {"choices": ["Alpha"]}}],
         "was_cancelled": False, "created_at": after, "updated_at": after}]})  # fmt: skip
    return out


def _events(data: Path) -> list[dict]:
    with LabelStore.open(data / "ila.db") as store:
        return store.label_history()


@pytest.fixture
def ls_export(exported, tmp_path) -> tuple[Path, Path]:
    """(data dir, Label Studio JSON export file)."""
    data, _, tasks = exported
    path = tmp_path / "from-label-studio" / "project-7-at-2026.json"
    path.parent.mkdir()
    path.write_text(json.dumps(_as_label_studio_exports(tasks)), encoding="utf-8")
    return data, path


def test_label_studio_json_import_records_attributed_undoable_corrections(ls_export):
    """Changed annotations become expert corrections by their annotator; unchanged, cancelled and unmatched
    ones are reported; undo restores the label before the correction."""
    data, path = ls_export
    assert detect_layout(path) == "labelstudio-json"
    before = len(_events(data))
    results = list(import_path(path, data, user="admin"))
    summary = summarise(results)
    assert (summary["imported"], summary["rejected"], summary["layout"]) == (3, 1, "labelstudio-json")
    assert summary["reasons"] == {"no stored image matches this task (data.sha256 or the image file name)": 1}
    skipped = sorted(r.reason for r in results if r.status == "skipped")
    assert skipped == ["already the current label"] * 4 + ["annotation cancelled in Label Studio"]
    new = _events(data)[before:]
    assert sorted((e["label"], e["user"], e["source"]) for e in new) == [
        ("Alpha", "ana@example.org", "expert"), ("Alpha", "labelstudio-user-3", "expert"),
        ("Beta", "ana@example.org", "expert")]  # fmt: skip
    changed = next(e for e in new if e["label"] == "Beta")
    assert changed["note"].startswith("Label Studio annotation 501")
    with LabelStore.open(data / "ila.db") as store:
        image_id = changed["image_id"]
        assert store.image(image_id)["label"] == "Beta"
        store.undo(image_id, client_event_id="undo-ls", user="admin")
        assert store.image(image_id)["label"] == "Alpha"


def test_importing_the_same_export_twice_stores_nothing_new(ls_export):
    """Idempotent by annotation id: the second import reports duplicates and writes no event."""
    data, path = ls_export
    list(import_path(path, data))
    count = len(_events(data))
    again = list(import_path(path, data))
    assert len(_events(data)) == count
    assert sorted(r.status for r in again).count("duplicate") == 3 and "imported" not in {r.status for r in again}


def _convert(path: Path, config: Path, fmt: str) -> Path:
    from label_studio_sdk.converter import Converter

    converter = Converter(config=str(config), project_dir=None, download_resources=False)
    out_dir = path.parent / fmt
    if fmt == "JSON_MIN":
        converter.convert_to_json_min(str(path), str(out_dir), is_dir=False)
        return out_dir / "result.json"
    converter.convert_to_csv(str(path), str(out_dir), is_dir=False, sep=",")
    return out_dir / "result.csv"


@pytest.mark.parametrize("fmt, layout", [("JSON_MIN", "labelstudio-json-min"), ("CSV", "labelstudio-csv")])
def test_json_min_and_csv_exports_from_the_sdk_converter(ls_export, tmp_path, fmt, layout):
    """The SDK's Converter turns the JSON export into JSON_MIN / CSV; either imports the same corrections, and
    after the JSON import it adds nothing (same annotation ids)."""
    data, path = ls_export
    config = tmp_path / "ls" / "label_config.xml"
    converted = _convert(path, config, fmt)
    assert detect_layout(converted) == layout
    fresh = tmp_path / "fresh"
    shutil.copytree(data, fresh)
    results = list(import_path(converted, fresh))
    assert summarise(results)["imported"] == 3 and {r.layout for r in results} == {layout}
    users = sorted(e["user"] for e in _events(fresh) if e["source"] == "expert")
    assert users == ["ana@example.org", "ana@example.org", "labelstudio-user-3"]
    list(import_path(path, data))
    count = len(_events(data))
    assert {r.status for r in import_path(converted, data)} <= {"duplicate", "skipped", "rejected"}
    assert len(_events(data)) == count
    if fmt == "CSV":
        assert all(r.line for r in results)


def test_an_annotation_edited_later_is_recorded_again_and_a_stale_one_is_not(ls_export):
    """Same annotation id with a newer updated_at is a new correction; an annotation older than a label given
    in ILA Studio since is skipped."""
    data, path = ls_export
    list(import_path(path, data))
    tasks = json.loads(path.read_text())
    edited = next(t for t in tasks for a in t["annotations"] if a["id"] == 501)
    annotation = next(a for a in edited["annotations"] if a["id"] == 501)
    annotation["result"][0]["value"]["choices"] = ["Alpha"]
    annotation["updated_at"] = _stamp(10)
    stale = next(t for t in tasks for a in t["annotations"] if a["id"] == 502)
    with LabelStore.open(data / "ila.db") as store:
        row = store.image_by_sha256(stale["data"]["sha256"])
        store.record_label(row["id"], "Beta", client_event_id="ila-later", user="ana")
    next(a for a in stale["annotations"] if a["id"] == 502)["updated_at"] = _stamp(-30)
    path.write_text(json.dumps(tasks))
    results = {r.file: r for r in import_path(path, data)}
    assert results[f"task {edited['id']} annotation 501"].status == "imported"
    stale_result = results[f"task {stale['id']} annotation 502"]
    assert stale_result.status == "skipped" and "after this annotation" in stale_result.reason


def test_data_tab_download_holds_tasks_and_label_config(exported, tmp_path):
    """The Data tab's Label Studio export is one zip: the tasks JSON (with the URL prefix asked for) and the
    label_config.xml beside it."""
    import zipfile
    from types import SimpleNamespace

    from ila_core.ui.data import run_export

    data, _, _ = exported
    (tmp_path / "cache").mkdir()
    studio = SimpleNamespace(data_dir=data, temp_dir=tmp_path / "cache")
    archive = run_export(studio, "labelstudio", "http://127.0.0.1:8081/")
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == ["label_config.xml", "labelstudio.json"]
        tasks = json.loads(zf.read("labelstudio.json"))
        assert b'<Choices name="cultivar"' in zf.read("label_config.xml")
    assert all(t["data"]["image"].startswith("http://127.0.0.1:8081/images/") for t in tasks)
