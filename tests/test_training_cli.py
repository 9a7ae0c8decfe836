"""The train / eval / predict / reproduce commands end to end on the tiny model."""

from __future__ import annotations

import json

import pytest

from ila_core.cli import main
from ila_core.training.reproduce import find_dataset, load_ufg
from ila_core.training.toydata import toy_image, write_toy_store

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--backbone", "test_vit", "--weights", "none", "--image-size", "96", "--ds-locations", "1,3"]




def _run(capsys, argv: list[str]) -> tuple[int, dict]:
    code = main(argv)
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1])


def test_train_eval_predict(tmp_path, capsys):
    """train prints model_version + metrics; eval and predict use that version."""
    write_toy_store(tmp_path, num_classes=3, train_per_class=6, holdout_per_class=2)
    code, trained = _run(capsys, ["train", "--data-dir", str(tmp_path), *TINY, "--epochs", "2", "--batch-size", "8",
                                  "--no-progress", "--json"])  # fmt: skip
    assert code == 0 and trained["status"] == "succeeded" and trained["model_version"] == 1
    assert {"top1", "top5", "macro_f1"} <= set(trained["metrics"])
    code, evaluated = _run(capsys, ["eval", "--data-dir", str(tmp_path), "--json"])
    assert code == 0 and evaluated["model_version"] == 1
    assert evaluated["metrics"]["top1"] == pytest.approx(trained["metrics"]["top1"])
    img = tmp_path / "leaf.png"
    toy_image(1, 99, size=64).save(img)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    code, predicted = _run(capsys, ["predict", str(img), str(tmp_path / "bad.jpg"), "--data-dir", str(tmp_path),
                                    "--top-k", "2", "--json"])  # fmt: skip
    first, second = predicted["predictions"]
    assert code == 1 and len(first["topk"]) == 2 and first["topk"][0]["prob"] >= first["topk"][1]["prob"]
    assert "error" in second


def test_train_refuses_while_a_job_runs(tmp_path, capsys):
    """train while another job is live exits with a clear error (one job at a time)."""
    import os

    from ila_core.store import LabelStore

    store_path = write_toy_store(tmp_path, num_classes=2, train_per_class=2, holdout_per_class=1)
    with LabelStore.open(store_path) as store:
        store.enqueue_job("train", {})
        store.claim_job("other", os.getppid())  # a live process holds it
    assert main(["train", "--data-dir", str(tmp_path), *TINY, "--no-progress", "--json"]) == 2
    assert "already running" in capsys.readouterr().err


def _mini_ufg(root, classes=3, train=4, test=2):
    folder = root / "cotton_square_new"
    folder.mkdir(parents=True)
    for c in range(1, classes + 1):
        for i in range(train + test):
            split = "train" if i < train else "test"
            toy_image(c - 1, i, size=64).save(folder / f"{c}_{i + 1}_{split}.png")
    return folder


def test_load_ufg_uses_the_official_split(tmp_path):
    """The flat UFG layout gives train and test splits from the file names, classes in id order."""
    folder = _mini_ufg(tmp_path / "ufg")
    assert find_dataset(tmp_path / "ufg", "cotton") == folder
    data = load_ufg(folder)
    assert data.class_names == ["cultivar_0001", "cultivar_0002", "cultivar_0003"]
    assert len(data.train) == 12 and len(data.holdout) == 6
    assert {s.label for s in data.holdout} == {0, 1, 2} and all("_test" in s.path.name for s in data.holdout)


def test_reproduce_writes_the_results_table(tmp_path, capsys):
    """reproduce trains each variant with the paper protocol and writes JSON + markdown with paper numbers."""
    _mini_ufg(tmp_path / "ufg")
    out = tmp_path / "results"
    code, report = _run(capsys, ["reproduce", "--ufg-root", str(tmp_path / "ufg"), "--dataset", "cotton",
                                 "--variants", "ila,ila++", *TINY[:4], "--image-size", "448", "--ds-locations", "1,3",
                                 "--epochs", "1", "--batch-size", "4", "--out", str(out), "--no-progress", "--json"])  # fmt: skip
    assert code == 0 and [r["variant"] for r in report["rows"]] == ["ila", "ila++"]
    assert report["rows"][1]["paper_top1"] == 55.42 and report["rows"][0]["paper_top1"] is None
    assert report["test_images"] == 6 and 0 <= report["rows"][0]["top1"] <= 100
    table = (out / "reproduce_cotton_448.md").read_text()
    assert "| ila++ |" in table and "55.42" in table
    assert json.loads((out / "reproduce_cotton_448.json").read_text())["rows"] == report["rows"]
