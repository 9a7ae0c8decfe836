"""The train / eval / predict / reproduce commands end to end on the tiny model."""

from __future__ import annotations

import json
import math

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
    assert code == 0 and trained["status"] == "succeeded"
    assert trained["model_version"] in [v["version_id"] for v in trained["versions"]]  # the probe or the ILA version
    assert {"top1", "top5", "macro_f1"} <= set(trained["metrics"])
    code, evaluated = _run(capsys, ["eval", "--data-dir", str(tmp_path), "--json"])
    assert code == 0 and evaluated["model_version"] == trained["model_version"]
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


def _mini_anno(folder, classes=3, train=2, test=1, stage=""):
    """``images/`` + ``anno/{train,test}.txt`` (``<file> <class 1-based>``), as SoyGene and each SoyAgeing stage."""
    (folder / "images").mkdir(parents=True)
    (folder / "anno").mkdir()
    lines = {"train": [], "test": []}
    for c in range(1, classes + 1):
        for i in range(train + test):
            split = "train" if i < train else "test"
            name = f"yd{c:03d}{'_' + stage if stage else ''}_{i + 1}_{split}.png"
            toy_image(c - 1, i + 10 * len(stage), size=48).save(folder / "images" / name)
            lines[split].append(f"{name} {c}")
    for split, rows in lines.items():
        (folder / "anno" / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return folder


def _mini_ageing(root, stages=("R1", "R3"), **sizes):
    folder = root / "soybean_ageing"
    for stage in stages:
        _mini_anno(folder / stage, stage=stage, **sizes)
    return folder


def _reproduce(capsys, ufg_root, dataset, out, *, variants="ila++", image_size="448") -> tuple[int, dict]:
    return _run(capsys, ["reproduce", "--ufg-root", str(ufg_root), "--dataset", dataset, "--variants", variants,
                         *TINY[:4], "--image-size", image_size, "--ds-locations", "1,3", "--epochs", "1",
                         "--batch-size", "4", "--out", str(out), "--no-progress", "--json"])  # fmt: skip


def _assert_table(out, report, dataset, size, paper):
    """The JSON and markdown on disk hold our finite numbers next to the paper's."""
    for row in report["rows"]:
        assert all(math.isfinite(row[k]) and 0 <= row[k] <= 100 for k in ("top1", "top5", "macro_f1")), row
        assert row["epochs"] == 1
    stem = out / f"reproduce_{dataset}_{size}"
    assert json.loads(stem.with_suffix(".json").read_text())["rows"] == report["rows"]
    table = stem.with_suffix(".md").read_text()
    for row, expected in zip(report["rows"], paper, strict=True):
        assert row["paper_top1"] == expected
        line = next(x for x in table.splitlines() if x.startswith(f"| {row['variant']} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == f"{row['top1']:.2f}" and cells[2] == ("n/a" if expected is None else f"{expected:.2f}")


def test_reproduce_on_the_anno_layout(tmp_path, capsys):
    """SoyGene's layout (images/ + anno/*.txt): the official split comes from the annotation files."""
    _mini_anno(tmp_path / "ufg" / "soybean_gene")
    (tmp_path / "ufg" / "soybean_gene" / "images" / "unlisted.png").write_bytes(b"not in anno")
    out = tmp_path / "results"
    code, report = _reproduce(capsys, tmp_path / "ufg", "soygene", out, variants="ila+,ila++")
    assert code == 0 and report["folder"] == str(tmp_path / "ufg" / "soybean_gene")
    assert (report["num_classes"], report["train_images"], report["test_images"]) == (3, 6, 3)
    _assert_table(out, report, "soygene", 448, [52.65, 62.19])


def test_reproduce_on_the_pooled_ageing_layout(tmp_path, capsys):
    """SoyAgeing (R1..R6 stage folders, each images/ + anno/): all stages pooled into one task, as in Table 1."""
    _mini_ageing(tmp_path / "ufg")
    out = tmp_path / "results"
    code, report = _reproduce(capsys, tmp_path / "ufg", "soyageing", out)
    assert code == 0 and report["folder"] == str(tmp_path / "ufg" / "soybean_ageing")
    assert (report["num_classes"], report["train_images"], report["test_images"]) == (3, 12, 6)
    _assert_table(out, report, "soyageing", 448, [75.00])


@pytest.mark.parametrize("root", ["ufg", "ufg/soybean_ageing", "ufg/soybean_ageing/R3"])
def test_reproduce_on_one_ageing_stage(tmp_path, capsys, root):
    """soyageingr3 trains and tests on stage R3 alone, found from the UFG root, the ageing folder or R3 itself."""
    _mini_ageing(tmp_path / "ufg")
    assert load_ufg(find_dataset(tmp_path / root, "soyageingr3")).train[0].path.parent.parent.name == "R3"
    if root != "ufg":
        return  # one end-to-end run is enough; the others only check where the split comes from
    out = tmp_path / "results"
    code, report = _reproduce(capsys, tmp_path / root, "soyageingr3", out, variants="ila", image_size="224")
    assert code == 0 and report["folder"] == str(tmp_path / "ufg" / "soybean_ageing" / "R3")
    assert (report["num_classes"], report["train_images"], report["test_images"]) == (3, 6, 3)
    assert report["rows"][0]["paper_ten_dataset_mean"] == 53.1  # no per-dataset 224 px number in the paper
    _assert_table(out, report, "soyageingr3", 224, [None])


def test_reproduce_refuses_a_missing_stage(tmp_path):
    """soyageingr2 does not exist in the release; a stage folder that is absent is named in the error."""
    _mini_ageing(tmp_path / "ufg", stages=("R1",))
    with pytest.raises(ValueError, match="unknown UFG dataset"):
        find_dataset(tmp_path / "ufg", "soyageingr2")
    with pytest.raises(ValueError, match="R4"):
        find_dataset(tmp_path / "ufg", "soyageingr4")


def test_a_dataset_root_only_stands_for_its_own_dataset(tmp_path):
    """--ufg-root pointing at one dataset's folder is used for that dataset and refused for the others
    (training SoyGene and tabulating it against Cotton's paper number would be silently wrong)."""
    gene = _mini_anno(tmp_path / "soybean_gene")
    ageing = _mini_ageing(tmp_path / "ufg", stages=("R1",))
    flat = _mini_ufg(tmp_path / "flat")
    assert find_dataset(gene, "soygene") == gene and find_dataset(ageing, "soyageing") == ageing
    assert find_dataset(flat, "soylocal") == flat  # the flat datasets share one layout: the name cannot tell
    for root, other in ((gene, "cotton"), (ageing, "soygene"), (flat, "soyageing")):
        with pytest.raises(ValueError, match="itself is a ufg-"):
            find_dataset(root, other)
