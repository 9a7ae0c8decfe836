"""The quick-recipe study's smoke path: tiny random-init test_vit, one seed, three candidates, JSON shape."""

from __future__ import annotations

import json


from bench import bench_recipe


def test_placement_matches_paper_on_12_blocks():
    """'paper' is the paper's (3, 7) on ViT-B/S; the 6-block test model gets (1, 3)."""
    assert bench_recipe.placement("paper", 12) == (3, 7)
    assert bench_recipe.placement("late", 12) == (9, 10)
    assert bench_recipe.placement("paper", 6) == (1, 3)


def test_size_parse():
    """``KxN[:H]`` gives cultivars, train and holdout images per cultivar."""
    assert bench_recipe.Size.parse("48x4:4", 8) == bench_recipe.Size(48, 4, 4)
    assert bench_recipe.Size.parse("6x8", 8).label() == "6x8"


def test_quick_smoke_writes_runs_and_rows(tmp_path, capsys):
    """``--quick`` trains the probe and two ILA candidates and writes runs plus paired summary rows."""
    out = tmp_path / "recipe.json"
    result = bench_recipe.main(["--quick", "--backbone", "test_vit", "--weights", "none", "--image-size", "96",
                                "--work-dir", str(tmp_path / "sets"), "--out", str(out), "--threads", "1"])  # fmt: skip
    data = json.loads(out.read_text())
    assert data["benchmark"] == "bench_recipe" and data == json.loads(json.dumps(result))
    assert {r["candidate"] for r in data["runs"]} == set(bench_recipe.QUICK)
    for r in data["runs"]:
        assert 0.0 <= r["top1"] <= 1.0 and r["size"] == "3x2" and r["seed"] == 0
        assert r["steps"] == (0 if r["candidate"] == "probe" else 2)
    rows = {r["candidate"]: r for r in data["rows"]}
    assert rows["probe"]["delta_mean"] == 0.0 and rows["probe"]["meets_aim"] is False
    assert rows["late-lpft"]["seeds"] == 1 and "±" in rows["late-lpft"]["top1"]
    assert "| candidate |" in capsys.readouterr().out
