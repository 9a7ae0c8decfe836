"""Other tools' layouts in and out: FiftyOne classification JSON, COCO, Hugging Face imagefolder (read by the real
``datasets``), our CSV round trip with every label kind, and refusals for label files the importer cannot read.

FiftyOne and COCO fixtures are written by hand after the formats' documentation (FiftyOne needs MongoDB and
does not install beside the pinned requirements); ``datasets`` is the real library.
"""

from __future__ import annotations

import csv
import json
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ila_core.data.exporters import export
from ila_core.data.importers import detect_layout, import_path, summarise
from ila_core.store import LabelStore

_seed = iter(range(10_000, 20_000))


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(next(_seed))
    Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(path)
    return path


def _run(path: Path, data_dir: Path, **kwargs):
    return list(import_path(path, data_dir, **kwargs))


def _labels(data_dir: Path) -> Counter:
    with LabelStore.open(data_dir / "ila.db") as store:
        return Counter((item.label, item.split) for item in store.labelled_items())


def _states(data_dir: Path) -> dict[str, tuple]:
    """sha256 -> (kind, label, alt_label, split) of every stored image."""
    with LabelStore.open(data_dir / "ila.db") as store:
        out = {}
        for row in store.images():
            current = store.current_label(row["id"])
            out[row["sha256"]] = (current and current["kind"], current and current["label"],
                                  current and current["alt_label"], row["split"])  # fmt: skip
        return out


# -- FiftyOne: data/ + labels.json -----------------------------------------------------------------


def _fiftyone(root: Path, labels: dict, classes: list | None = ("Alpha", "Beta")) -> Path:
    for key in labels:
        _png(root / "data" / f"{key}.png")
    body = {"labels": labels} if classes is None else {"classes": list(classes), "labels": labels}
    (root / "labels.json").write_text(json.dumps(body))
    return root


def test_fiftyone_classification_export_gets_its_labels_not_the_folder_name(tmp_path):
    """Class indices map through 'classes'; null is unlabelled; no image is labelled 'data'; the summary names
    the layout."""
    root = _fiftyone(tmp_path / "fo", {"6a1f": 0, "77b2": 1, "80c3": 1, "91d4": None})
    assert detect_layout(root) == "fiftyone-classification"
    results = _run(root, tmp_path / "d")
    summary = summarise(results)
    assert summary["layout"] == "fiftyone-classification" and summary["labelled"] == 3
    assert {r.layout for r in results} == {"fiftyone-classification"}
    assert _labels(tmp_path / "d") == Counter({("Alpha", None): 1, ("Beta", None): 2})
    with LabelStore.open(tmp_path / "d" / "ila.db") as store:
        assert "data" not in store.cultivars()


def test_fiftyone_label_variants_and_split_folders(tmp_path):
    """String targets, {"label", "confidence"} targets and per-split data/ + labels.json; multi-label and
    listed-but-missing entries are rejected per file."""
    _fiftyone(tmp_path / "fo" / "train", {"a": "Alpha", "b": {"label": "Beta", "confidence": 0.9},
                                          "c": ["Alpha", "Beta"]}, classes=None)  # fmt: skip
    _fiftyone(tmp_path / "fo" / "test", {"d": 1})
    labels = json.loads((tmp_path / "fo" / "test" / "labels.json").read_text())
    labels["labels"]["gone"] = 0
    (tmp_path / "fo" / "test" / "labels.json").write_text(json.dumps(labels))
    results = {r.file: r for r in _run(tmp_path / "fo", tmp_path / "d")}
    assert _labels(tmp_path / "d") == Counter({("Alpha", "train"): 1, ("Beta", "train"): 1, ("Beta", "holdout"): 1})
    assert results["train/data/c.png"].status == "rejected" and "multi-label" in results["train/data/c.png"].reason
    assert results["test/labels.json:gone"].reason == "listed in test/labels.json but not found in data/"


def test_fiftyone_export_inside_a_zip(tmp_path):
    """A zipped FiftyOne export (with a wrapper folder) imports like the folder."""
    root = _fiftyone(tmp_path / "fo", {"u1": 0, "u2": 1})
    archive = tmp_path / "fo.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in root.rglob("*"):
            if p.is_file():
                zf.write(p, f"export/{p.relative_to(root).as_posix()}")
    results = _run(archive, tmp_path / "d")
    assert [r.status for r in results] == ["imported"] * 2 and results[0].layout == "fiftyone-classification"
    assert _labels(tmp_path / "d") == Counter({("Alpha", None): 1, ("Beta", None): 1})


# -- COCO: images/ + annotations.json --------------------------------------------------------------


def test_coco_categories_on_images_become_cultivars(tmp_path):
    """An image's cultivar is the category of its annotations; none means unlabelled; two categories, unknown
    ids and unlisted files are rejected; nothing is labelled 'images'."""
    root = tmp_path / "coco"
    for name in ("a.png", "b.png", "c.png", "d.png", "stray.png"):
        _png(root / "images" / name)
    (root / "annotations.json").write_text(json.dumps({
        "info": {"description": "hand-written after cocodataset.org/#format-data"},
        "categories": [{"id": 1, "name": "Alpha", "supercategory": "leaf"}, {"id": 2, "name": "Beta"}],
        "images": [{"id": i, "file_name": n, "width": 20, "height": 16} for i, n in
                   enumerate(["a.png", "b.png", "c.png", "d.png", "missing.png"], start=1)],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [5, 5, 5, 5], "area": 25, "iscrowd": 0},
            {"id": 12, "image_id": 2, "category_id": 2, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0},
            {"id": 13, "image_id": 3, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0},
            {"id": 14, "image_id": 3, "category_id": 2, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0},
            {"id": 15, "image_id": 99, "category_id": 2, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0},
        ],
    }))  # fmt: skip
    assert detect_layout(root) == "coco"
    results = {r.file: r for r in _run(root, tmp_path / "d")}
    assert results["images/a.png"].label == "Alpha" and results["images/b.png"].label == "Beta"
    assert results["images/c.png"].status == "rejected" and "2 categories" in results["images/c.png"].reason
    assert results["images/d.png"].status == "imported" and results["images/d.png"].label is None
    assert results["images/stray.png"].reason == "not listed in any COCO annotation file"
    assert "but missing" in results["annotations.json:missing.png"].reason
    assert any("image id 99" in (r.reason or "") for r in results.values())
    assert _labels(tmp_path / "d") == Counter({("Alpha", None): 1, ("Beta", None): 1})


# -- Hugging Face imagefolder with metadata files (checked against the real datasets) --------------


def _hf_tree(root: Path) -> Path:
    """train/ and test/, each with its own metadata.csv (where datasets looks for a split's metadata)."""
    rows = {"train": [("0.png", "Alpha"), ("1.png", "Beta")], "test": [("2.png", "Alpha"), ("3.png", "")]}
    for split, entries in rows.items():
        for name, _ in entries:
            _png(root / split / name)
        with (root / split / "metadata.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["file_name", "label", "plot"])
            writer.writerows([name, label, f"P{name[0]}"] for name, label in entries)
    return root


def test_hf_imagefolder_metadata_labels_match_what_datasets_reads(tmp_path):
    """metadata.csv's 'label' column is the cultivar (datasets reads the same column); splits from folders;
    other scalar columns kept as metadata."""
    datasets = pytest.importorskip("datasets")
    root = _hf_tree(tmp_path / "hf")
    loaded = datasets.load_dataset("imagefolder", data_dir=str(root), cache_dir=str(tmp_path / "cache"))
    theirs = {split: sorted(str(x or "") for x in loaded[split]["label"]) for split in loaded}
    assert theirs == {"train": ["Alpha", "Beta"], "test": ["", "Alpha"]}
    results = _run(root, tmp_path / "d")
    assert {r.layout for r in results} == {"hf-imagefolder"} and [r.line for r in results] == [2, 3, 2, 3]
    assert _labels(tmp_path / "d") == Counter({("Alpha", "train"): 1, ("Beta", "train"): 1, ("Alpha", "holdout"): 1})
    with LabelStore.open(tmp_path / "d" / "ila.db") as store:
        assert sorted(r["metadata"]["plot"] for r in store.images()) == ["P0", "P1", "P2", "P3"]


def test_hf_metadata_jsonl_with_class_label_names(tmp_path):
    """Integer labels are ClassLabel indices named in README.md's dataset_info; unlisted images are rejected."""
    root = tmp_path / "hf"
    for name in ("a.png", "b.png", "extra.png"):
        _png(root / "train" / name)
    (root / "train" / "metadata.jsonl").write_text('{"file_name": "a.png", "label": 1}\n{"file_name": "b.png", '
                                                   '"label": 0}\n')  # fmt: skip
    (root / "README.md").write_text("---\ndataset_info:\n  features:\n  - name: image\n    dtype: image\n"
                                    "  - name: label\n    dtype:\n      class_label:\n        names:\n"
                                    "          '0': Amber\n          '1': Birch\n---\n")  # fmt: skip
    results = {r.file: r for r in _run(root, tmp_path / "d")}
    assert results["train/extra.png"].reason == "not listed in any metadata file"
    assert _labels(tmp_path / "d") == Counter({("Amber", "train"): 1, ("Birch", "train"): 1})


def test_hf_metadata_without_label_column_is_refused(tmp_path):
    """A metadata file with no 'label' column is refused naming it; nothing is imported unlabelled."""
    _png(tmp_path / "hf" / "Alpha" / "a.png")
    (tmp_path / "hf" / "metadata.csv").write_text("file_name,caption\nAlpha/a.png,a leaf\n")
    with pytest.raises(ValueError, match=r"metadata\.csv: no 'label' column"):
        _run(tmp_path / "hf", tmp_path / "d")
    assert not (tmp_path / "d" / "images").exists()


# -- refusing label files nobody reads ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["annotations.xml", "Alpha/labels.txt", "classes.yaml", "train.parquet"])
def test_tree_with_an_unread_label_file_is_refused_naming_it(tmp_path, name):
    """Auto detection refuses a tree holding a label file it cannot read, naming the file; an explicit
    imagefolder import uses the folder names anyway."""
    _png(tmp_path / "tree" / "Alpha" / "a.png")
    (tmp_path / "tree" / name).write_text("<annotation/>")
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        _run(tmp_path / "tree", tmp_path / "d")
    assert not (tmp_path / "d" / "ila.db").exists() or _labels(tmp_path / "d") == Counter()
    results = _run(tmp_path / "tree", tmp_path / "d", fmt="imagefolder")
    assert _labels(tmp_path / "d") == Counter({("Alpha", None): 1}) and results[0].layout == "imagefolder"


def test_fiftyone_directory_tree_unlabeled_folder_imports_unlabelled(tmp_path):
    """FiftyOne's ImageClassificationDirectoryTree keeps unlabelled images in _unlabeled/: no cultivar of that
    name; README files are skipped like hidden files."""
    _png(tmp_path / "tree" / "Alpha" / "a.png")
    _png(tmp_path / "tree" / "_unlabeled" / "b.png")
    (tmp_path / "tree" / "README.md").write_text("# my leaves\n")
    results = _run(tmp_path / "tree", tmp_path / "d")
    assert [r.status for r in results] == ["imported", "imported"]
    assert _labels(tmp_path / "d") == Counter({("Alpha", None): 1})


# -- our ImageFolder export read by datasets, and back --------------------------------------------------


@pytest.fixture
def store_dir(tmp_path) -> Path:
    """A data dir with train, holdout and unassigned hard labels, an unsure and a between answer, and one
    image with no label."""
    tree = tmp_path / "tree"
    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            _png(tree / split / ("Alpha" if i % 2 else "Beta") / f"{split}{i}.png")
    data = tmp_path / "data"
    _run(tree, data)
    extra = [_run(_png(tmp_path / f"pool{i}.png"), data)[0].image_id for i in range(4)]
    with LabelStore.open(data / "ila.db") as store:
        store.record_label(extra[0], "Alpha", client_event_id="e0", user="ana")  # labelled, no split
        store.record_label(extra[1], "Beta", client_event_id="e1", user="ana", kind="unsure")
        store.record_label(extra[2], "Alpha", client_event_id="e2", user="ana", kind="between", alt_label="Beta")
    return data


def test_imagefolder_export_loads_every_split_in_datasets_and_round_trips(store_dir, tmp_path):
    """datasets sees train 3, test 2 and the unassigned pool 1 (load_dataset on the folder reads the README's
    configs; the "imagefolder" builder alone sees train and test), torchvision reads a split folder; importing the
    export gives the labels back."""
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "export"
    summary = export(store_dir, out, fmt="imagefolder")
    assert summary["splits"] == {"train": 3, "holdout": 2, "unassigned": 1}
    every = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert {s: every[s].num_rows for s in every} == {"train": 3, "test": 2, "unassigned": 1}
    assert every["train"].features["label"].names == ["Alpha", "Beta"]
    builder = datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=str(tmp_path / "cache2"))
    assert {s: builder[s].num_rows for s in builder} == {"train": 3, "test": 2}
    from torchvision.datasets import ImageFolder

    assert len(ImageFolder(str(out / "train"))) == 3 and ImageFolder(str(out / "test")).classes == ["Alpha", "Beta"]
    results = _run(out, tmp_path / "fresh")
    assert {r.status for r in results} == {"imported"} and {r.layout for r in results} == {"imagefolder"}
    assert _labels(tmp_path / "fresh") == _labels(store_dir)


# -- our CSV: every label kind, paths relative to the data dir, lines in their own field --------------


def test_csv_round_trip_keeps_unsure_and_between(store_dir, tmp_path):
    """Every image's state (hard, unsure, between, none) and split survives export -> import."""
    out = tmp_path / "labels.csv"
    export(store_dir, out, fmt="csv")
    results = _run(out, tmp_path / "fresh")
    assert {r.status for r in results} == {"imported"}
    assert _states(tmp_path / "fresh") == _states(store_dir)
    summary = summarise(results)
    assert summary["unsure_or_between"] == 2 and summary["layout"] == "csv"


def test_csv_exported_away_from_the_data_dir_imports_into_it_again(store_dir, tmp_path):
    """A downloaded CSV (paths relative to the data dir) resolves against the data dir it is imported into:
    duplicates, and an image without a label takes the one the spreadsheet gave it."""
    out = tmp_path / "downloads" / "labels.csv"
    export(store_dir, out, fmt="csv")
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    blank = next(r for r in rows if not r["label_kind"])
    blank["label"] = "Beta"
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    results = _run(out, store_dir)
    assert {r.status for r in results} == {"duplicate"}, {r.reason for r in results}
    assert sum("label applied" in r.reason for r in results) == 1
    with LabelStore.open(store_dir / "ila.db") as store:
        assert store.image(int(blank["image_id"]))["label"] == "Beta"


def test_csv_rejections_keep_the_line_out_of_the_reason(tmp_path):
    """Two missing files: the same reason (so the summary groups them) and each line in its own field."""
    _png(tmp_path / "set" / "ok.png")
    (tmp_path / "set" / "list.csv").write_text("path,label\nok.png,Alpha\ngone.png,Alpha\n\nalso-gone.png,Beta\n")
    results = _run(tmp_path / "set" / "list.csv", tmp_path / "d")
    rejected = [r for r in results if r.status == "rejected"]
    assert [(r.reason, r.line) for r in rejected] == [("file not found", 3), ("file not found", 5)]
    assert summarise(results)["reasons"] == {"file not found": 2}
    assert results[0].line == 2 and results[0].as_dict()["line"] == 2
