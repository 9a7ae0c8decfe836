"""Adapter checkpoints: atomic publish, validation order, and refusal of every kind of bad file (FLT-02, 13-17)."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ila_core.adapters import adapter_state_dict
from ila_core.checkpoint import (
    CheckpointError,
    backbone_fingerprint,
    build_reproducible,
    load_built,
    load_into,
    load_model,
    manifest_path_for,
    save_checkpoint,
    sweep_temp_files,
    verify_files,
)

CLASSES = ["a", "b", "c"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def built(tiny_backbone, ila_config):
    b = build_reproducible(tiny_backbone, ila_config, 3)
    with torch.no_grad():  # make the adapters differ from a fresh build, so a load is observable
        for p in b.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    return b


@pytest.fixture
def published(built, tmp_path):
    return save_checkpoint(built, tmp_path / "adapters" / "v1.safetensors", class_names=CLASSES, metrics={"top1": 0.5})


def _rewrite(info, state: dict[str, torch.Tensor]) -> None:
    """Replace the tensor file and fix the manifest hash, so only the tensor content is wrong."""
    save_file(state, str(info.path))
    manifest = json.loads(info.manifest_path.read_text())
    import hashlib

    manifest["tensors"]["sha256"] = hashlib.sha256(info.path.read_bytes()).hexdigest()
    info.manifest_path.write_text(json.dumps(manifest))


def test_round_trip_gives_same_logits(built, published, tmp_path):
    """A published checkpoint reloads into a fresh model with identical eval-mode logits."""
    x = torch.randn(2, 3, 96, 96)
    built.model.eval()
    model, manifest = load_model(published.path, tmp_path)
    assert manifest["class_names"] == CLASSES and manifest["metrics"] == {"top1": 0.5}
    torch.testing.assert_close(model(x), built.model(x))


def test_manifest_records_provenance(built, published):
    """The manifest names backbone, size, fingerprint, method, tensor hash and time."""
    m = published.manifest
    assert m["backbone"]["name"] == "test_vit" and m["backbone"]["image_size"] == 96
    assert m["backbone"]["fingerprint"] == backbone_fingerprint(built.model)
    assert m["method"]["type"] == "ILAConfig" and m["tensors"]["sha256"] == published.sha256
    assert m["created_at"] and m["parent_version"] is None
    assert json.loads(manifest_path_for(published.path).read_text()) == m


def test_publish_leaves_no_temp_files(published):
    """Publishing renames its temp files into place."""
    assert sorted(p.name for p in published.path.parent.iterdir()) == ["v1.json", "v1.safetensors"]


def test_sweep_removes_stray_temp_files(published):
    """Stray *.tmp files from an interrupted publish are swept; real files stay."""
    stray = published.path.parent / ".v2.safetensors.abc.tmp"
    stray.write_bytes(b"partial")
    assert sweep_temp_files(published.path.parent) == [stray]
    assert not stray.exists() and published.path.exists()


def test_save_refuses_non_finite(built, tmp_path):
    """NaN adapters are never published."""
    with torch.no_grad():
        built.model.head.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="head.weight"):
        save_checkpoint(built, tmp_path / "x.safetensors", class_names=CLASSES)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "missing"),
        (b"", "empty"),
        (os.urandom(4096), "not a safetensors"),
        (pickle.dumps({"head.weight": [1.0, 2.0]}), "not a safetensors"),
        (b"PK\x03\x04" + b"\x00" * 200, "not a safetensors"),
    ],
    ids=["missing", "zero-bytes", "random-bytes", "pickle-renamed", "zip-renamed"],
)
def test_bad_tensor_files_are_refused(published, tmp_path, content, match):
    """Missing, empty, random, pickle and zip files named .safetensors are refused first (FLT-13)."""
    if content is None:
        published.path.unlink()
    else:
        published.path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_model(published.path, tmp_path)


def test_truncated_file_is_refused(published, tmp_path):
    """A checkpoint cut short is refused as truncated."""
    data = published.path.read_bytes()
    published.path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        verify_files(published.path)


def test_pickle_payload_never_runs(tmp_path):
    """A .pt and a renamed pickle with a __reduce__ payload are refused without running it (FLT-17)."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    blob = pickle.dumps(Payload())
    for name in ("evil.pt", "evil.safetensors"):
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(CheckpointError):
            load_model(tmp_path / name, tmp_path)
    assert not marker.exists()


def test_missing_manifest_is_refused(published, tmp_path):
    """A tensor file without its manifest is refused."""
    published.manifest_path.unlink()
    with pytest.raises(CheckpointError, match="manifest .* missing"):
        load_model(published.path, tmp_path)


def test_unparseable_manifest_is_refused(published, tmp_path):
    """A manifest that is not JSON is refused."""
    published.manifest_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="unparseable"):
        load_model(published.path, tmp_path)


def test_sha256_mismatch_is_refused(published, built, tmp_path):
    """A tensor file replaced after publishing (valid safetensors, other content) is refused (FLT-16)."""
    state = adapter_state_dict(built.model)
    state["head.bias"] = state["head.bias"] + 1
    save_file(state, str(published.path))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_model(published.path, tmp_path)


def test_other_backbone_is_refused(published, tiny_backbone, ila_config):
    """Loading into a backbone with other frozen weights names the mismatch (FLT-15)."""
    other = build_reproducible(tiny_backbone, ila_config, 3)
    with torch.no_grad():
        other.model.patch_embed.proj.weight.add_(1.0)
    with pytest.raises(CheckpointError, match="another backbone"):
        load_into(other, published.path)


def test_other_image_size_is_refused(published, tiny_backbone, ila_config):
    """Loading into the same backbone at another image size is refused."""
    other = build_reproducible(replace(tiny_backbone, image_size=112), ila_config, 3)
    with pytest.raises(CheckpointError, match="image size"):
        load_into(other, published.path)


def test_other_weights_hash_is_refused(published, built):
    """A manifest recording another weight-file hash is refused."""
    manifest = json.loads(published.manifest_path.read_text())
    manifest["backbone"]["weights_sha256"] = "f" * 64
    published.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="other base-model hash"):
        load_into(built, published.path)


@pytest.mark.parametrize("problem", ["extra", "missing", "shape"])
def test_key_problems_name_the_key(published, built, tmp_path, problem):
    """Extra keys, missing keys and wrong shapes are refused with the key named (FLT-15)."""
    state = adapter_state_dict(built.model)
    if problem == "extra":
        state["blocks.0.evil.weight"], key = torch.zeros(2), "blocks.0.evil.weight"
    elif problem == "missing":
        del state["blocks.3.adapter.up.weight"]
        key = "blocks.3.adapter.up.weight"
    else:
        state["head.weight"], key = torch.zeros(4, 64), "head.weight"
    _rewrite(published, state)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_model(published.path, tmp_path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_values_are_refused(published, built, tmp_path, value):
    """NaN/Inf adapter weights are rejected at validation (FLT-14)."""
    state = adapter_state_dict(built.model)
    state["blocks.1.adapter.down.weight"][0, 0] = value
    _rewrite(published, state)
    with pytest.raises(CheckpointError, match="non-finite.*blocks.1.adapter.down.weight"):
        load_model(published.path, tmp_path)


def test_load_built_rebuilds_method_and_classes(published, tmp_path):
    """load_built rebuilds the method config and head size from the manifest."""
    rebuilt, manifest = load_built(published.path, tmp_path)
    assert rebuilt.num_classes == 3 and rebuilt.method.ds_locations == (1, 3)
    assert not rebuilt.model.training


_SAVER = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    from ila_core.adapters import ILAConfig
    from ila_core.checkpoint import build_reproducible, save_checkpoint, backbone_fingerprint
    from ila_core.config import BackboneConfig
    out = Path(sys.argv[1])
    b = build_reproducible(BackboneConfig(name="test_vit", image_size=96, weights="none"), ILAConfig(ds_locations=(1, 3)), 4000)
    fp = backbone_fingerprint(b.model)
    (out / "ready").write_text("1")
    i = 0
    while True:
        i += 1
        save_checkpoint(b, out / f"v{i}.safetensors", class_names=[str(k) for k in range(4000)], fingerprint=fp)
    """
)


def test_kill_during_publish_never_leaves_a_bad_checkpoint(tmp_path):
    """kill -9 while publishing in a loop: every checkpoint with a manifest loads; temps are swept (FLT-02)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for round_ in range(int(os.environ.get("ILA_CRASH_ROUNDS", "1"))):  # nightly: more rounds
        out = tmp_path / f"r{round_}"
        out.mkdir()
        proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(out)], env=env)
        try:
            deadline = time.time() + 60
            while not (out / "ready").exists() and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(0.2 + 0.37 * round_)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        sweep_temp_files(out)
        assert not list(out.glob("*.tmp"))
        published = sorted(out.glob("*.json"))
        assert published, "the saver never published"
        for manifest in published:
            verify_files(manifest.with_suffix(".safetensors"))
