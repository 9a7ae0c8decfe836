"""Load and validate checkpoints in a fixed order, naming the first problem (never torch.load)."""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapters import adapter_state_dict, config_from_dict
from ..backbone import BuiltModel
from ..config import BackboneConfig
from .build import backbone_fingerprint, build_reproducible
from .format import _MAX_HEADER, FORMAT, SUFFIX, CheckpointError, _first_non_finite, manifest_path_for

_logger = logging.getLogger(__name__)


# -- loading and validation ----------------------------------------------------------------------


def _check_safetensors_header(path: Path) -> None:
    """Refuse anything that is not a well-formed safetensors file, before any decoder sees it."""
    if not path.name.endswith(SUFFIX):
        raise CheckpointError(f"{path}: not a {SUFFIX} file (pickle formats such as .pt are never loaded)")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file missing")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > min(_MAX_HEADER, size - 8):
            raise CheckpointError(f"{path}: not a safetensors file (bad header length; a pickle is refused)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not an object)")
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise CheckpointError(f"{path}: not a safetensors file (bad entry for {key!r})")
        end = max(end, int(entry["data_offsets"][1]))
    if 8 + n + end > size:
        raise CheckpointError(f"{path}: checkpoint file is truncated ({size} bytes, header needs {8 + n + end})")


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the checkpoint at ``path`` (the tensor file), parsed.

    Raises:
        CheckpointError: missing, unparseable, or not an ILA Studio manifest.
    """
    mpath = manifest_path_for(Path(path))
    if not mpath.is_file():
        raise CheckpointError(f"{path}: manifest {mpath.name} missing")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: manifest {mpath.name} unparseable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: manifest {mpath.name} is not an {FORMAT} manifest")
    for key in ("backbone", "method", "class_names", "tensors", "num_classes"):
        if key not in manifest:
            raise CheckpointError(f"{path}: manifest {mpath.name} lacks {key!r}")
    return manifest


def verify_files(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Check the tensor file, the manifest and the hash; return ``(manifest, tensors)``.

    Raises:
        CheckpointError: file missing / empty / not safetensors, manifest missing / unparseable, sha256 mismatch.
    """
    from safetensors.torch import load

    path = Path(path)
    _check_safetensors_header(path)
    manifest = read_manifest(path)
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    expected = manifest["tensors"].get("sha256") if isinstance(manifest["tensors"], dict) else None
    if sha != expected:
        raise CheckpointError(f"{path}: sha256 mismatch (file {sha[:12]}, manifest {str(expected)[:12]}); "
                              "the file was replaced or damaged after publishing")
    try:
        state = load(data)
    except Exception as exc:  # safetensors raises its own error type for malformed data
        raise CheckpointError(f"{path}: not a safetensors file ({exc})") from None
    return manifest, state


# manifests written before these fields existed were built with timm's behaviour, whatever the backbone
_PREPARATION_DEFAULTS = {"normalization": "timm", "pos_embed_resize": "timm"}


def manifest_backbone(manifest: Mapping[str, Any]) -> BackboneConfig:
    """The :class:`BackboneConfig` a manifest was trained with."""
    b = manifest["backbone"]
    weights_file = b.get("weights_file")
    try:
        return BackboneConfig(
            name=b["name"],
            image_size=int(b["image_size"]),
            weights=b.get("weights", "default"),
            weights_file=Path(weights_file) if weights_file else None,
            **{k: b.get(k, v) for k, v in _PREPARATION_DEFAULTS.items()},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"manifest backbone entry is invalid: {exc}") from None


def check_backbone(manifest: Mapping[str, Any], built: BuiltModel, *, fingerprint: str | None = None) -> None:
    """The backbone a checkpoint was trained on must be the one it is loaded into.

    Name, image size, input normalisation and position-grid resize must match; the weight-file sha256 must match
    when the manifest has one, otherwise the fingerprint of the frozen tensors must (random init, hub weights).

    Raises:
        CheckpointError: naming what differs.
    """
    b = manifest["backbone"]
    if b.get("name") != built.backbone.name:
        raise CheckpointError(f"checkpoint is for backbone {b.get('name')!r}, not {built.backbone.name!r}")
    if int(b.get("image_size", -1)) != built.backbone.image_size:
        raise CheckpointError(f"checkpoint is for image size {b.get('image_size')}, not {built.backbone.image_size}")
    for key, default in _PREPARATION_DEFAULTS.items():
        if b.get(key, default) != getattr(built.backbone, key):
            raise CheckpointError(f"checkpoint was trained with {key}={b.get(key, default)!r}, "
                                  f"this backbone has {getattr(built.backbone, key)!r}")  # fmt: skip
    if b.get("weights_sha256"):
        if b["weights_sha256"] != built.weights_sha256:
            raise CheckpointError(
                f"checkpoint was trained on backbone weights {b['weights_sha256'][:12]}, "
                f"these are {str(built.weights_sha256)[:12]} (other base-model hash)"
            )
        return
    fp = fingerprint or backbone_fingerprint(built.model)
    if b.get("fingerprint") != fp:
        raise CheckpointError(
            f"checkpoint was trained on another backbone (fingerprint {str(b.get('fingerprint'))[:12]}, this one {fp[:12]})"
        )


def check_state(state: Mapping[str, torch.Tensor], model: nn.Module) -> None:
    """Keys and shapes must be exactly the model's adapter/head tensors, and all values finite.

    Raises:
        CheckpointError: naming the first unexpected, missing or misshapen key, or the first non-finite tensor.
    """
    expected = {k: tuple(v.shape) for k, v in adapter_state_dict(model).items()}
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(f"unexpected key in checkpoint: {unexpected[0]} ({len(unexpected)} in all)")
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"checkpoint lacks key {missing[0]} ({len(missing)} in all)")
    for key in sorted(state):
        if tuple(state[key].shape) != expected[key]:
            raise CheckpointError(
                f"shape mismatch for {key}: checkpoint {tuple(state[key].shape)} vs model {expected[key]}"
            )
    bad = _first_non_finite(state)
    if bad is not None:
        raise CheckpointError(f"non-finite values (NaN/Inf) in {bad}")


def load_into(built: BuiltModel, path: Path, *, fingerprint: str | None = None) -> dict[str, Any]:
    """Validate the checkpoint at ``path`` against ``built`` and load its tensors; return the manifest.

    ``built.model`` must be a fresh model that nobody is using (RELIABILITY fact 8): serving models are
    swapped, never loaded into.

    Raises:
        CheckpointError: the first problem, in the order described in the module docstring.
    """
    manifest, state = verify_files(path)
    check_backbone(manifest, built, fingerprint=fingerprint)
    check_state(state, built.model)
    if int(manifest["num_classes"]) != len(manifest["class_names"]):
        raise CheckpointError(f"{path}: manifest has {len(manifest['class_names'])} class names for "
                              f"{manifest['num_classes']} outputs")
    with torch.no_grad():
        own = built.model.state_dict()
        for key, value in state.items():
            own[key].copy_(value)  # state_dict tensors share storage with the parameters and buffers
    return manifest


def load_built(
    path: Path,
    data_dir: Path | None,
    *,
    device: str | torch.device = "cpu",
    drop_rate: float = 0.0,
    backbone: BackboneConfig | None = None,
) -> tuple[BuiltModel, dict[str, Any]]:
    """Rebuild the model a checkpoint describes (fresh backbone + method), validate and load it.

    Args:
        path: the ``.safetensors`` file.
        data_dir: where the default backbone weights live.
        device: where the returned model goes.
        drop_rate: backbone dropout (0 for serving).
        backbone: override the manifest's backbone config (e.g. a different weights file path on this machine).

    Returns:
        ``(built, manifest)`` with ``built.model`` in eval mode.
    """
    manifest, _ = verify_files(path)  # fail on files before paying for a model build
    try:
        method = config_from_dict(manifest["method"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: manifest method config is invalid ({exc})") from None
    bb = backbone or manifest_backbone(manifest)
    built = build_reproducible(bb, method, int(manifest["num_classes"]), data_dir=data_dir, drop_rate=drop_rate)
    manifest = load_into(built, path)
    built.model.to(device).eval()
    return built, manifest


def load_model(
    checkpoint_path: Path, data_dir: Path | None, *, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """A fresh, validated model (eval mode) from a checkpoint, and its manifest.

    Raises:
        CheckpointError: the first problem with the files or their fit to the backbone.
        ila_core.weights.WeightsError: the backbone weights themselves are missing or corrupt.
    """
    built, manifest = load_built(checkpoint_path, data_dir, device=device)
    return built.model, manifest
