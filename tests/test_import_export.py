"""Tests for ila_core.data importers/exporters on miniature folders in the real layouts (ImageFolder, CSV, UFG)."""

from __future__ import annotations

import csv
import json
import os
import zipfile
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from ila_core.data.archive import ZipLimits, sweep_stale, write_atomic
from ila_core.data.exporters import export, folder_name, neutralise_cell
from ila_core.data.importers import ImportResult, detect_layout, import_path, summarise, ufg_label
from ila_core.store import LabelStore

_counter = iter(range(1, 10_000))


def _png(path: Path, seed: int | None = None) -> Path:
    """A distinct tiny 24x20 PNG (every call gets new pixels unless a seed is given)."""
    rng = np.random.default_rng(next(_counter) if seed is None else seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
    return path


def _run(path: Path, data_dir: Path, **kwargs) -> list[ImportResult]:
    return list(import_path(path, data_dir, **kwargs))


def _labels(data_dir: Path) -> Counter:
    with LabelStore.open(data_dir / "ila.db") as store:
        return Counter((item.label, item.split) for item in store.labelled_items())


def _stored_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "images").rglob("*") if p.is_file()] if (data_dir / "images").exists() else []


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


@pytest.fixture
def split_tree(tmp_path) -> Path:
    """ImageFolder with split folders: train/{Alpha,Beta}, test/Alpha."""
    root = tmp_path / "tree"
    _png(root / "train" / "Alpha" / "a1.png")
    _png(root / "train" / "Alpha" / "a2.png")
    _png(root / "train" / "Beta" / "b1.png")
    _png(root / "test" / "Alpha" / "a3.png")
    return root


def test_imagefolder_with_splits(split_tree, tmp_path):
    """root/<split>/<cultivar>/ imports labels, and test/ becomes holdout."""
    results = _run(split_tree, tmp_path / "data")
    assert [r.status for r in results] == ["imported"] * 4
    assert _labels(tmp_path / "data") == Counter({("Alpha", "train"): 2, ("Beta", "train"): 1, ("Alpha", "holdout"): 1})


def test_imagefolder_without_splits_and_loose_files(tmp_path):
    """root/<cultivar>/*.png gets labels and no split; files directly under root import unlabelled."""
    root = tmp_path / "tree"
    _png(root / "Gamma" / "g.png")
    _png(root / "Delta" / "d.png")
    _png(root / "loose.png")
    results = {r.file: r for r in _run(root, tmp_path / "data")}
    assert results["Gamma/g.png"].label == "Gamma" and results["Gamma/g.png"].split is None
    assert results["loose.png"].status == "imported" and results["loose.png"].label is None
    assert _labels(tmp_path / "data") == Counter({("Gamma", None): 1, ("Delta", None): 1})


def test_single_class_folder_is_a_label_not_a_wrapper(tmp_path):
    """A tree with one cultivar folder keeps that folder as the label."""
    _png(tmp_path / "tree" / "Solo" / "s.png")
    assert _run(tmp_path / "tree", tmp_path / "data")[0].label == "Solo"


def test_images_are_stored_content_addressed(split_tree, tmp_path):
    """Stored files live at images/ab/<sha256>.png and the row points there."""
    data = tmp_path / "data"
    results = {r.file: r for r in _run(split_tree, data)}
    with LabelStore.open(data / "ila.db") as store:
        row = store.image(results["train/Alpha/a1.png"].image_id)
    assert row["rel_path"] == f"images/{row['sha256'][:2]}/{row['sha256']}.png"
    assert (data / row["rel_path"]).is_file()
    assert row["original_name"] == "a1.png"
    assert len(_stored_files(data)) == 4
    assert not list(data.rglob("*.tmp"))


def test_csv_import_relative_absolute_and_split(tmp_path):
    """CSV rows with relative and absolute paths, labels and splits; an empty label imports unlabelled."""
    root = tmp_path / "csvset"
    rel = _png(root / "imgs" / "one.png")
    absolute = _png(tmp_path / "elsewhere" / "two.png")
    free = _png(root / "imgs" / "three.png")
    (root / "labels.csv").write_text(
        f"path,label,split\nimgs/{rel.name},Alpha,train\n{absolute},Beta,holdout\nimgs/{free.name},,\n"
        "imgs/missing.png,Alpha,train\n",
        encoding="utf-8",
    )
    results = {r.file: r for r in _run(root / "labels.csv", tmp_path / "data", fmt="csv")}
    assert results["imgs/one.png"].status == "imported"
    assert results[str(absolute)].split == "holdout"
    assert results["imgs/three.png"].label is None
    assert results["imgs/missing.png"].status == "rejected" and "not found" in results["imgs/missing.png"].reason
    assert _labels(tmp_path / "data") == Counter({("Alpha", "train"): 1, ("Beta", "holdout"): 1})


def test_csv_without_header_is_refused(tmp_path):
    """A CSV without a path,label header is a clear ValueError, nothing imported."""
    (tmp_path / "bad.csv").write_text("file,class\na.png,1\n")
    with pytest.raises(ValueError, match="path,label"):
        _run(tmp_path / "bad.csv", tmp_path / "data", fmt="csv")


def test_ufg_flat_layout(tmp_path):
    """Cotton80-style flat names: 1-based class -> cultivar_0001, test -> holdout."""
    root = tmp_path / "Cotton80"
    _png(root / "1_1_train.png")
    _png(root / "1_2_test.png")
    _png(root / "12_1_train.png")
    assert detect_layout(root) == "ufg-flat"
    results = _run(root, tmp_path / "data", fmt="ufg")
    assert {r.status for r in results} == {"imported"}
    expected = {("cultivar_0001", "train"): 1, ("cultivar_0001", "holdout"): 1, ("cultivar_0012", "train"): 1}
    assert _labels(tmp_path / "data") == Counter(expected)


def _anno_set(root: Path, train: dict[str, int], test: dict[str, int]) -> Path:
    for name in [*train, *test]:
        _png(root / "images" / name)
    (root / "anno").mkdir(parents=True)
    (root / "anno" / "train.txt").write_text("".join(f"{n} {c}\n" for n, c in train.items()))
    (root / "anno" / "test.txt").write_text("".join(f"{n} {c}\n" for n, c in test.items()))
    return root


def test_ufg_soygene_layout(tmp_path):
    """images/ + anno/{train,test}.txt: listed files get their class; unlisted and missing ones are rejected."""
    root = _anno_set(tmp_path / "SoyGene", {"a.png": 1, "b.png": 2}, {"c.png": 2})
    _png(root / "images" / "stray.png")
    with (root / "anno" / "test.txt").open("a") as fh:
        fh.write("gone.png 3\n../../etc/passwd 1\n")
    assert detect_layout(root) == "ufg-anno"
    results = {r.file: r for r in _run(root, tmp_path / "data")}
    assert results["images/c.png"].split == "holdout" and results["images/c.png"].label == "cultivar_0002"
    assert results["images/stray.png"].status == "rejected"
    assert results["images/gone.png"].status == "rejected"
    assert any(r.status == "rejected" and "inside images/" in r.reason for r in results.values())
    assert sum(_labels(tmp_path / "data").values()) == 3


def test_ufg_soyageing_layout(tmp_path):
    """R1/R3 stage folders: same cultivar ids across stages, stage kept as metadata."""
    root = tmp_path / "SoyAgeing"
    _anno_set(root / "R1", {"1.png": 1}, {"2.png": 1})
    _anno_set(root / "R3", {"1.png": 1}, {"2.png": 2})
    assert detect_layout(root) == "ufg-ageing"
    results = _run(root, tmp_path / "data", fmt="ufg")
    assert [r.file for r in results][0] == "R1/images/1.png"
    assert _labels(tmp_path / "data") == Counter(
        {("cultivar_0001", "train"): 2, ("cultivar_0001", "holdout"): 1, ("cultivar_0002", "holdout"): 1}
    )
    with LabelStore.open(tmp_path / "data" / "ila.db") as store:
        stages = Counter(row["metadata"]["growth_stage"] for row in store.images())
    assert stages == Counter({"R1": 2, "R3": 2})


@pytest.mark.parametrize(
    "layout, build",
    [
        ("imagefolder", lambda r: _png(r / "A" / "x.png")),
        ("ufg-flat", lambda r: _png(r / "3_1_test.png")),
        ("ufg-anno", lambda r: _anno_set(r, {"x.png": 1}, {})),
        ("ufg-ageing", lambda r: _anno_set(r / "R5", {"x.png": 1}, {})),
        ("csv", lambda r: (_png(r / "x.png"), (r / "list.csv").write_text("path,label\nx.png,A\n"))),
    ],
)
def test_auto_detects_each_layout(layout, build, tmp_path):
    """--format auto names the layout, also when a zip-style wrapper folder surrounds it."""
    build(tmp_path / "wrap" / "inner")
    assert detect_layout(tmp_path / "wrap") == layout


def test_ufg_format_refuses_an_imagefolder(tmp_path):
    """Asking for ufg on a tree that is not UFG is a clear error."""
    _png(tmp_path / "tree" / "A" / "x.png")
    with pytest.raises(ValueError, match="not a UFG layout"):
        _run(tmp_path / "tree", tmp_path / "data", fmt="ufg")


def test_duplicates_are_recognised_by_content(tmp_path):
    """The same bytes twice (different names and classes) -> one image; the second is 'duplicate'."""
    root = tmp_path / "tree"
    first = _png(root / "A" / "x.png")
    (root / "B").mkdir()
    (root / "B" / "copy.png").write_bytes(first.read_bytes())
    results = {r.file: r for r in _run(root, tmp_path / "data")}
    dup = results["B/copy.png"]
    assert dup.status == "duplicate" and dup.image_id == results["A/x.png"].image_id
    assert "not applied" in dup.reason
    assert _labels(tmp_path / "data") == Counter({("A", None): 1})
    assert len(_stored_files(tmp_path / "data")) == 1


def test_reimport_is_all_duplicates(split_tree, tmp_path):
    """Running the same import twice adds nothing."""
    data = tmp_path / "data"
    _run(split_tree, data)
    again = _run(split_tree, data)
    assert {r.status for r in again} == {"duplicate"}
    with LabelStore.open(data / "ila.db") as store:
        assert store.count_images() == 4 and len(store.label_history()) == 4


def test_duplicate_gets_label_when_it_had_none(tmp_path):
    """An unlabelled stored image takes the label of a later import of the same bytes."""
    image = _png(tmp_path / "loose" / "x.png")
    _run(image, tmp_path / "data")
    _png(tmp_path / "tree" / "Alpha" / "x.png", seed=None).write_bytes(image.read_bytes())
    result = _run(tmp_path / "tree", tmp_path / "data")[0]
    assert result.status == "duplicate" and "label applied" in result.reason
    assert _labels(tmp_path / "data") == Counter({("Alpha", None): 1})


def test_rejected_text_file_stores_nothing(tmp_path):
    """A text file among images is rejected with a reason; no row and no file are written for it."""
    root = tmp_path / "tree"
    _png(root / "A" / "good.png")
    (root / "A" / "notes.png").write_text("field notes, not a picture")
    (root / "A" / "empty.jpg").write_bytes(b"")
    results = {r.file: r for r in _run(root, tmp_path / "data")}
    assert results["A/notes.png"].status == "rejected" and results["A/notes.png"].reason == "not an image"
    assert results["A/empty.jpg"].reason == "empty file"
    with LabelStore.open(tmp_path / "data" / "ila.db") as store:
        assert store.count_images() == 1
    assert len(_stored_files(tmp_path / "data")) == 1


def test_bad_label_is_rejected_before_storing(tmp_path):
    """A folder name the store refuses as a label rejects the file before anything is written."""
    _png(tmp_path / "tree" / "Bad\u202eName" / "x.png")
    result = _run(tmp_path / "tree", tmp_path / "data")[0]
    assert result.status == "rejected" and result.reason.startswith("bad label")
    assert _stored_files(tmp_path / "data") == []


def test_zip_of_imagefolder_with_wrapper(split_tree, tmp_path):
    """A zip of an ImageFolder (wrapped in one top folder) imports like the folder; temp files are removed."""
    entries = {f"set/{p.relative_to(split_tree).as_posix()}": p.read_bytes() for p in split_tree.rglob("*.png")}
    archive = _zip(tmp_path / "set.zip", entries)
    results = _run(archive, tmp_path / "data")
    assert [r.status for r in results] == ["imported"] * 4
    assert results[0].file.startswith("set.zip!")
    assert _labels(tmp_path / "data")[("Alpha", "holdout")] == 1
    assert not any((tmp_path / "data" / "cache").iterdir())


def test_zip_traversal_entry_is_refused(tmp_path):
    """Entries named ../evil.png or /abs.png are reported as rejected and never written anywhere."""
    good = _png(tmp_path / "src" / "A" / "ok.png").read_bytes()
    evil = _png(tmp_path / "src" / "evil.png").read_bytes()
    archive = _zip(tmp_path / "t.zip", {"A/ok.png": good, "../evil.png": evil, "/abs.png": evil, "A/..\\x.png": evil})
    results = {r.file: r for r in _run(archive, tmp_path / "data" / "inner")}
    assert results["t.zip!../evil.png"].status == "rejected" and "unsafe path" in results["t.zip!../evil.png"].reason
    assert results["t.zip!/abs.png"].status == "rejected"
    assert results["t.zip!A/..\\x.png"].status == "rejected"
    assert results["t.zip!A/ok.png"].status == "imported"
    assert not (tmp_path / "data" / "evil.png").exists()
    assert not (tmp_path / "data" / "inner" / "cache" / "evil.png").exists()
    assert len(_stored_files(tmp_path / "data" / "inner")) == 1


def test_zip_bomb_entry_is_refused(tmp_path):
    """An entry with an absurd compression ratio is refused; a zip over the total cap is refused whole."""
    ok = _png(tmp_path / "ok.png").read_bytes()
    archive = _zip(tmp_path / "bomb.zip", {"A/zeros.png": b"\x00" * 5_000_000, "A/ok.png": ok})
    results = {r.file: r for r in _run(archive, tmp_path / "data")}
    assert "compression ratio" in results["bomb.zip!A/zeros.png"].reason
    whole = _run(archive, tmp_path / "data2", zip_limits=ZipLimits(max_total_bytes=1_000_000))
    assert len(whole) == 1 and whole[0].status == "rejected" and "zip expands" in whole[0].reason
    assert _stored_files(tmp_path / "data2") == []


def test_csv_in_zip_cannot_point_outside(tmp_path):
    """Inside a zip, CSV paths that are absolute or climb out are refused."""
    outside = _png(tmp_path / "secret.png")
    inside = _png(tmp_path / "x.png").read_bytes()
    rows = f"path,label\nx.png,A\n{outside},A\n../secret.png,A\n"
    archive = _zip(tmp_path / "c.zip", {"list.csv": rows.encode(), "x.png": inside})
    statuses = [r.status for r in _run(archive, tmp_path / "data")]
    assert statuses == ["imported", "rejected", "rejected"]


def test_progress_and_summary(split_tree, tmp_path):
    """The progress callback sees (done, total) per file; summarise counts statuses."""
    (split_tree / "train" / "Alpha" / "junk.png").write_text("x")
    seen: list[tuple[int, int]] = []
    results = _run(split_tree, tmp_path / "data", on_progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 5) for i in range(1, 6)]
    summary = summarise(results)
    assert (summary["imported"], summary["rejected"], summary["labelled"]) == (4, 1, 4)
    assert summary["reasons"] == {"not an image": 1}
    json.dumps([r.as_dict() for r in results])  # one JSON line per file must be possible


def test_split_override(split_tree, tmp_path):
    """split= forces the split of every new image."""
    _run(split_tree, tmp_path / "data", split="holdout")
    assert {split for _, split in _labels(tmp_path / "data")} == {"holdout"}


def test_csv_export_neutralises_formulas_and_round_trips(tmp_path):
    """Cells starting with = + - @ get a leading apostrophe; importing the CSV gives the original labels back."""
    root = tmp_path / "tree"
    for label in ("=HYPERLINK(1)", "@SUM", "-rust", "+x", "Plain"):
        _png(root / "train" / folder_name(label) / "x.png")
    data = tmp_path / "data"
    _run(root, data)
    summary = export(data, tmp_path / "labels.csv", fmt="csv")
    assert summary["images"] == 5 and summary["labelled"] == 5
    with (tmp_path / "labels.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["label"] for r in rows} == {"'=HYPERLINK(1)", "'@SUM", "'-rust", "'+x", "Plain"}
    assert all(r["path"].startswith("data/images/") and (tmp_path / r["path"]).is_file() for r in rows)
    _run(tmp_path / "labels.csv", tmp_path / "fresh", fmt="csv")
    assert _labels(tmp_path / "fresh") == _labels(data)


def _labels_by_sha(data_dir: Path) -> dict[str, tuple[str | None, str | None]]:
    """sha256 -> (current hard label, split) of every stored image, labelled or not."""
    with LabelStore.open(data_dir / "ila.db") as store:
        return {r["sha256"]: (r["label"] if r["label_kind"] == "label" else None, r["split"]) for r in store.images()}


@pytest.fixture
def labelled_data(split_tree, tmp_path) -> Path:
    """A store with train/holdout labels, an unlabelled image and a relabelled one, at <tmp>/srv/data."""
    data = tmp_path / "srv" / "data"
    results = _run(split_tree, data)
    _run(_png(tmp_path / "loose.png"), data)
    with LabelStore.open(data / "ila.db") as store:
        store.record_label(results[0].image_id, "Beta", client_event_id="fix-1", user="ana")
    return data


def test_csv_export_next_to_the_data_dir_reimports_where_it_was_written(labelled_data, tmp_path):
    """A CSV written above the data directory has paths below its own folder and imports into a fresh store."""
    out = tmp_path / "srv" / "labels.csv"
    assert export(labelled_data, out, fmt="csv")["paths_relative_to"] == "export"
    text = out.read_text(encoding="utf-8")
    assert str(tmp_path) not in text
    rows = list(csv.DictReader(text.splitlines()))
    assert len(rows) == 5 and all(r["path"].startswith("data/images/") for r in rows)
    results = _run(out, tmp_path / "fresh", fmt="csv")
    assert {r.status for r in results} == {"imported"}
    assert _labels_by_sha(tmp_path / "fresh") == _labels_by_sha(labelled_data)
    assert _labels(tmp_path / "fresh") == _labels(labelled_data)


def test_csv_export_elsewhere_has_data_dir_paths_and_a_bundle_reimports(labelled_data, tmp_path):
    """A CSV exported away from the data (a download): paths relative to the data directory, no server path,
    no '..'; the CSV zipped with the data directory's images/ imports into a fresh store with the same labels."""
    out = tmp_path / "downloads" / "labels.csv"
    assert export(labelled_data, out, fmt="csv")["paths_relative_to"] == "data_dir"
    text = out.read_text(encoding="utf-8")
    assert str(tmp_path) not in text and ".." not in text
    rows = list(csv.DictReader(text.splitlines()))
    assert all(r["path"].startswith("images/") and (labelled_data / r["path"]).is_file() for r in rows)
    entries = {"bundle/labels.csv": out.read_bytes()}
    entries |= {f"bundle/{r['path']}": (labelled_data / r["path"]).read_bytes() for r in rows}
    results = _run(_zip(tmp_path / "bundle.zip", entries), tmp_path / "fresh")
    assert [r.status for r in results] == ["imported"] * 5, [r.reason for r in results]
    assert _labels_by_sha(tmp_path / "fresh") == _labels_by_sha(labelled_data)


def test_csv_export_paths_survive_odd_folder_names_and_symlinked_images(split_tree, tmp_path):
    """A data directory named like a formula ('-data') and an images/ folder that is a symlink to another
    volume: the CSV still exports (the path is not apostrophe-mangled) and imports again."""
    data = tmp_path / "-data"
    _run(split_tree, data)
    (data / "images").rename(tmp_path / "volume")
    (data / "images").symlink_to(tmp_path / "volume", target_is_directory=True)
    out = tmp_path / "labels.csv"
    export(data, out, fmt="csv")
    assert all(r["path"].startswith("./-data/images/") for r in csv.DictReader(out.open(encoding="utf-8")))
    _run(out, tmp_path / "fresh", fmt="csv")
    assert _labels_by_sha(tmp_path / "fresh") == _labels_by_sha(data)
    assert export(data, tmp_path / "tree-out", fmt="imagefolder")["images"] == 4


def test_neutralise_cell():
    """Tab and CR count as formula starts too; safe text is unchanged."""
    assert [neutralise_cell(v) for v in ("\tx", "\rx", "ok", None, 3)] == ["'\tx", "'\rx", "ok", "", "3"]


def test_history_export_has_every_event(split_tree, tmp_path):
    """The history CSV lists all label events including undo, in commit order."""
    data = tmp_path / "data"
    results = _run(split_tree, data)
    with LabelStore.open(data / "ila.db") as store:
        store.record_label(results[0].image_id, "Beta", client_event_id="fix-1", user="ana")
        store.undo(results[0].image_id, client_event_id="undo-1", user="ana")
    assert export(data, tmp_path / "history.csv", fmt="history")["events"] == 6
    with (tmp_path / "history.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["kind"] for r in rows][-2:] == ["label", "undo"]
    assert rows[0]["source"] == "import" and len(rows[0]["sha256"]) == 64
    assert [int(r["event_id"]) for r in rows] == sorted(int(r["event_id"]) for r in rows)


def test_labelstudio_export_structure(split_tree, tmp_path):
    """Tasks carry data.image, an annotation from the current label and a prediction with model_version/score."""
    data = tmp_path / "data"
    results = _run(split_tree, data)
    with LabelStore.open(data / "ila.db") as store:
        version = store.add_model_version(
            path="adapters/v1.safetensors", sha256="0" * 64, manifest={}, metrics={}, parent_id=None,
            snapshot_event_id=store.last_event_id(), job_id=None,
        )
        store.add_predictions(version, [(results[0].image_id, [("Beta", 0.75), ("Alpha", 0.25)])])
    summary = export(data, tmp_path / "ls.json", fmt="labelstudio")
    assert summary == {"format": "labelstudio", "out": str(tmp_path / "ls.json"), "tasks": 4, "annotations": 4,
                       "predictions": 1, "label_config": str(tmp_path / "label_config.xml")}
    tasks = json.loads((tmp_path / "ls.json").read_text(encoding="utf-8"))
    task = next(t for t in tasks if t["id"] == results[0].image_id)
    assert task["data"]["image"].startswith("/data/local-files/?d=images/")
    assert task["annotations"][0]["result"][0]["value"]["choices"] == ["Alpha"]
    prediction = task["predictions"][0]
    assert prediction["model_version"] == f"v{version}" and prediction["score"] == 0.75
    assert prediction["result"][0] == {"from_name": "cultivar", "to_name": "image", "type": "choices",
                                       "value": {"choices": ["Beta"]}}


def test_imagefolder_round_trip(split_tree, tmp_path):
    """Export to an ImageFolder and import into a fresh data dir: the same labels, splits and pixels."""
    data, fresh = tmp_path / "data", tmp_path / "fresh"
    _run(split_tree, data)
    summary = export(data, tmp_path / "export", fmt="imagefolder")
    assert summary["images"] == 4 and summary["splits"] == {"train": 3, "holdout": 1}
    assert (tmp_path / "export" / "test" / "Alpha").is_dir()  # the holdout, under the name datasets expects
    _run(tmp_path / "export", fresh)
    assert _labels(fresh) == _labels(data)
    with LabelStore.open(data / "ila.db") as a, LabelStore.open(fresh / "ila.db") as b:
        pixels_a = sorted(np.asarray(Image.open(data / r["rel_path"])).tobytes() for r in a.images())
        pixels_b = sorted(np.asarray(Image.open(fresh / r["rel_path"])).tobytes() for r in b.images())
    assert pixels_a == pixels_b


def test_reimporting_an_export_into_the_same_store_adds_nothing(split_tree, tmp_path):
    """Our own export's files are recognised as the stored copies they are."""
    data = tmp_path / "data"
    _run(split_tree, data)
    export(data, tmp_path / "export", fmt="imagefolder")
    assert {r.status for r in _run(tmp_path / "export", data)} == {"duplicate"}


def test_imagefolder_export_refuses_a_non_empty_folder(split_tree, tmp_path):
    """Exporting into a folder with files in it is refused (no mixing of exports)."""
    data = tmp_path / "data"
    _run(split_tree, data)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not an empty folder"):
        export(data, tmp_path / "busy", fmt="imagefolder")


@pytest.mark.parametrize("label", ["a/b", "..", ".hidden", "x:y*z?", "50%", "trailing.", "Größe 7", "x%41"])
def test_folder_names_are_safe_and_reversible(label):
    """Cultivar names become one safe path component that decodes back to the name."""
    name = folder_name(label)
    assert "/" not in name and name not in (".", "..") and not name.startswith(".")
    assert unquote(name) == label


def test_export_without_store_is_an_error(tmp_path):
    """Exporting a data dir that has no store names the missing file."""
    with pytest.raises(FileNotFoundError, match="ila.db"):
        export(tmp_path, tmp_path / "x.csv", fmt="csv")


def test_ufg_label_is_one_based():
    """Class ids are 1-based; names are zero-padded to four digits."""
    assert ufg_label(1) == "cultivar_0001" and ufg_label(1938) == "cultivar_1938"
    with pytest.raises(ValueError):
        ufg_label(0)


def test_write_failure_reports_and_leaves_no_file(split_tree, tmp_path, monkeypatch):
    """A disk error while making a batch of files durable rejects those files with the reason, no file or row."""
    from ila_core.fsutil import DurableFiles

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    (tmp_path / "data").mkdir()
    LabelStore.open(tmp_path / "data" / "ila.db").close()
    monkeypatch.setattr(DurableFiles, "sync", no_space)
    results = _run(split_tree, tmp_path / "data")
    assert {r.reason for r in results} == {"could not store the image: No space left on device"}
    assert _stored_files(tmp_path / "data") == []
    with LabelStore.open(tmp_path / "data" / "ila.db") as store:
        assert store.count_images() == 0


def test_sweep_removes_only_old_leftovers(tmp_path):
    """Stale temp files and import folders go; a fresh temp file and published files stay."""
    write_atomic(tmp_path / "images" / "ab" / "done.png", b"x")
    old_tmp, new_tmp = tmp_path / "images" / "ab" / ".a.png.1.tmp", tmp_path / "images" / "ab" / ".b.png.2.tmp"
    old_dir = tmp_path / "cache" / "import-old"
    for path in (old_tmp, new_tmp):
        path.write_bytes(b"partial")
    old_dir.mkdir(parents=True)
    for path in (old_tmp, old_dir):
        os.utime(path, (1, 1))
    assert sweep_stale(tmp_path) == 2
    assert new_tmp.exists() and (tmp_path / "images" / "ab" / "done.png").exists()
    assert not old_tmp.exists() and not old_dir.exists()


def test_uploading_an_archived_image_again_restores_it(tmp_path):
    """A re-import of an archived image's bytes brings it back once (a restore event), labels untouched."""
    from ila_core.data.uploads import UploadReport

    image = _png(tmp_path / "tree" / "Alpha" / "x.png")
    data = tmp_path / "data"
    first = _run(tmp_path / "tree", data)[0]
    with LabelStore.open(data / "ila.db") as store:
        store.archive_image(first.image_id, client_event_id="ar1", user="ann")
        assert store.count_images() == 0
    again = _run(image, data)[0]  # the same bytes, no label this time
    assert again.status == "duplicate" and again.image_id == first.image_id
    assert "restored from archive" in again.reason
    assert "restored from archive: 1" in UploadReport(results=(again,)).describe()
    with LabelStore.open(data / "ila.db") as store:
        assert store.count_images() == 1 and store.archive_state(first.image_id) is None
        assert [e["action"] for e in store.image_events(first.image_id)] == ["archive", "restore"]
    third = _run(image, data)[0]  # not archived any more: an ordinary duplicate, no new event
    assert "restored" not in third.reason
    with LabelStore.open(data / "ila.db") as store:
        assert len(store.image_events(first.image_id)) == 2
    assert _labels(data) == Counter({("Alpha", None): 1})
