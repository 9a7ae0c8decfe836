"""The CLI contract other tools call: ``python -m ila_core info`` and ``weights``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ila_core.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_info_json_contract_in_a_subprocess():
    """`info --json` prints one JSON object with the spec's numbers for ILA on ViT-B/16."""
    cmd = [sys.executable, "-m", "ila_core", "info", "--backbone", "vit_base_patch16_224", "--variant", "ila",
           "--num-classes", "100", "--image-size", "224", "--weights", "none", "--json"]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=True).stdout
    data = json.loads(out)
    assert data["trainable_params"] == 41_264 + 769 * 100
    assert data["total_params"] == 85_916_052
    assert data["tokens_per_block"] == [197] * 4 + [145] * 4 + [101] * 4
    assert data["macs"] == pytest.approx(13.096e9, rel=0.01)


def test_info_bad_configuration_is_a_clear_error(capsys):
    """An image too small for two DS-ILAs exits 2 with one line naming the image size."""
    code = main(["info", "--backbone", "vit_base_patch16_224", "--image-size", "16", "--json"])
    assert code == 2
    assert "image size 16" in capsys.readouterr().err


def test_weights_command_installs_and_verifies(tmp_path, capsys):
    """`weights --json` converts the shipped default weights once and reports path and sha256."""
    assert main(["weights", "--data-dir", str(tmp_path), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert Path(first["path"]).is_file() and len(first["sha256"]) == 64
    assert main(["weights", "--data-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sha256"] == first["sha256"]
