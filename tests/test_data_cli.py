"""Data commands of the CLI and first-start seeding: import/export JSON lines and the demo set."""

from __future__ import annotations

import json

from PIL import Image

from ila_core.cli import main
from ila_core.data.demo import needs_seeding, seed_demo_set
from ila_core.data.synthetic import SyntheticConfig
from ila_core.store import LabelStore


def test_seed_demo_set_labels_train_and_holdout_and_leaves_a_pool(tmp_path):
    """The demo set arrives with labelled train/holdout splits and an unlabelled pool, nothing rejected."""
    assert needs_seeding(tmp_path)
    summary = seed_demo_set(tmp_path, SyntheticConfig(num_cultivars=3, image_size=32), train_per_class=2,
                            holdout_per_class=1, pool_per_class=1)  # fmt: skip
    assert summary["rejected"] == 0 and summary["imported"] == 3 * 4
    with LabelStore.open(tmp_path / "ila.db") as store:
        assert len(store.labelled_items(split="train")) == 6
        assert len(store.labelled_items(split="holdout")) == 3
        assert len(store.cultivars()) == 3
    assert not needs_seeding(tmp_path)


def test_import_command_prints_one_json_line_per_file(tmp_path, capsys):
    """`import --json` reports imported, duplicate and rejected files, then a summary line."""
    tree = tmp_path / "tree" / "train" / "Amber"
    tree.mkdir(parents=True)
    Image.new("RGB", (32, 32), (10, 120, 30)).save(tree / "a.png")
    Image.new("RGB", (32, 32), (10, 120, 30)).save(tree / "copy.png")
    (tree / "notes.png").write_text("not an image")
    code = main(["import", str(tmp_path / "tree"), "--data-dir", str(tmp_path / "d"), "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    statuses = sorted(line["status"] for line in lines[:-1])
    assert statuses == ["duplicate", "imported", "rejected"]
    assert lines[-1]["summary"]["imported"] == 1


def test_export_command_writes_csv(tmp_path, capsys):
    """`export --format csv` writes the current labels and prints a JSON summary."""
    seed_demo_set(tmp_path, SyntheticConfig(num_cultivars=2, image_size=32), train_per_class=1,
                  holdout_per_class=1, pool_per_class=0)  # fmt: skip
    out = tmp_path / "labels.csv"
    assert main(["export", str(out), "--data-dir", str(tmp_path), "--format", "csv", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["labelled"] == 4
    assert out.read_text().startswith("path,label,split")
