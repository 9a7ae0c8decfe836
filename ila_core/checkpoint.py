"""Adapter checkpoints: adapter + head tensors as safetensors plus a JSON manifest, published atomically.

A checkpoint is two files side by side: ``<name>.safetensors`` (what :func:`adapter_state_dict` returns: the
trainable tensors and the adapters' BN statistics) and ``<name>.json`` (the manifest: backbone name, image
size, weight-file hash and a fingerprint of the frozen backbone tensors, the method config, class names,
metrics, creation time, the sha256 of the tensor file and the parent version).

Publishing writes each file to a temp file in the same directory, fsyncs it, ``os.replace``-s it into place
and fsyncs the directory; the manifest goes last, so a manifest always describes a complete tensor file
(RELIABILITY fact 7). A kill can leave ``*.tmp`` files behind: :func:`sweep_temp_files` removes them.

Loading never calls ``torch.load``. Validation runs in a fixed order and stops at the first problem with a
:class:`CheckpointError` naming it: tensor file missing / empty / not safetensors, manifest missing or
unparseable, sha256 mismatch (FLT-16), backbone mismatch (FLT-15), unexpected / missing keys and shapes
(FLT-15), non-finite values (FLT-14).
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapters import ADAPTER_TYPES, MethodConfig, adapter_state_dict, config_from_dict, config_to_dict
from .backbone import BuiltModel, build_model, reset_head
from .config import BackboneConfig
from .fsutil import atomic_write, fsync_dir

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "FORMAT",
    "RANDOM_INIT_SEED",
    "build_reproducible",
    "backbone_fingerprint",
    "manifest_path_for",
    "save_checkpoint",
    "sweep_temp_files",
    "read_manifest",
    "manifest_backbone",
    "verify_files",
    "check_backbone",
    "check_state",
    "load_into",
    "load_model",
    "load_built",
    "reinit_trainable",
]

_logger = logging.getLogger(__name__)

FORMAT = "ila-studio-adapter/1"
SUFFIX = ".safetensors"
RANDOM_INIT_SEED = 0  # random-init backbones (tests, "none") are built under this seed so a reload matches
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file and the first problem found."""


@dataclass(frozen=True)
class CheckpointInfo:
    """A published checkpoint."""

    path: Path  # the .safetensors file
    manifest_path: Path
    sha256: str  # of the tensor file
    manifest: dict[str, Any]


def manifest_path_for(path: Path) -> Path:
    """The manifest next to a tensor file: ``x.safetensors`` -> ``x.json``."""
    path = Path(path)
    return path.with_name(path.name[: -len(SUFFIX)] + ".json") if path.name.endswith(SUFFIX) else path.with_suffix(".json")


# -- building ------------------------------------------------------------------------------------


def build_reproducible(
    backbone: BackboneConfig,
    method: MethodConfig,
    num_classes: int,
    *,
    data_dir: Path | None = None,
    drop_rate: float = 0.0,
) -> BuiltModel:
    """:func:`~ila_core.backbone.build_model` under a fixed seed, without touching the global RNG.

    Random-init backbones (``weights="none"``) must come out identical every time, or a checkpoint could not be
    reloaded onto "the same" backbone; pretrained ones are unaffected. Adapters and head are therefore identical
    too; training re-initialises them under its own seed (:func:`reinit_trainable`).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return build_model(backbone, method, num_classes, data_dir=data_dir, drop_rate=drop_rate)


@torch.no_grad()
def reinit_trainable(model: nn.Module) -> None:
    """Re-initialise adapter modules and the head from the current global RNG (the training seed)."""
    for module in model.modules():
        if isinstance(module, ADAPTER_TYPES) and hasattr(module, "init_weights"):
            module.init_weights()
    reset_head(model)


def _canonical(name: str) -> str:
    # Wrappers keep the original block as ``base_block``; the frozen tensor is the same with or without them.
    return name.replace(".base_block", "")


@torch.no_grad()
def backbone_fingerprint(model: nn.Module) -> str:
    """sha256 over the frozen backbone tensors (names without wrapper segments, dtype, shape, bytes).

    Identifies the backbone a checkpoint was trained on even when no weight file hash exists (random init,
    hub weights). Adapter and head tensors are excluded, so it does not change with training.
    """
    trained = set(adapter_state_dict(model))
    digest = hashlib.sha256()
    items = sorted((_canonical(k), v) for k, v in model.state_dict().items() if k not in trained)
    for name, tensor in items:
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


# -- saving --------------------------------------------------------------------------------------


def _backbone_entry(built: BuiltModel, fingerprint: str) -> dict[str, Any]:
    b = built.backbone
    return {
        "name": b.name,
        "image_size": b.image_size,
        "weights": b.weights,
        "weights_file": None if b.weights_file is None else str(b.weights_file),
        "weights_sha256": built.weights_sha256,
        "fingerprint": fingerprint,
    }


def save_checkpoint(
    built: BuiltModel,
    path: Path,
    *,
    class_names: list[str],
    metrics: Mapping[str, Any] | None = None,
    parent_version: int | None = None,
    train_config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    fingerprint: str | None = None,
) -> CheckpointInfo:
    """Publish ``built.model``'s adapter + head tensors and manifest atomically at ``path`` (``.safetensors``).

    Args:
        built: the trained model and how it was built.
        path: target tensor file; the manifest goes next to it (:func:`manifest_path_for`).
        class_names: one name per output, in head order.
        metrics: holdout metrics to record.
        parent_version: model version id training started from, if any.
        train_config: the recipe (e.g. ``dataclasses.asdict(TrainConfig)``), recorded as is.
        extra: anything else JSON-ready (job id, snapshot event id, ...).
        fingerprint: :func:`backbone_fingerprint` of the model if already known (saves hashing it again).

    Raises:
        ValueError: class names that do not match the head, or non-finite tensors (never published).
        OSError: the write failed (disk full, file too large); nothing is left at ``path``'s temp name.
    """
    from safetensors.torch import save

    path = Path(path)
    if not path.name.endswith(SUFFIX):
        raise ValueError(f"checkpoint files end in {SUFFIX}, got {path.name}")
    if len(class_names) != built.num_classes:
        raise ValueError(f"{len(class_names)} class names for a head with {built.num_classes} outputs")
    state = {k: v.detach().to("cpu").contiguous() for k, v in adapter_state_dict(built.model).items()}
    bad = _first_non_finite(state)
    if bad is not None:
        raise ValueError(f"refusing to save a checkpoint with non-finite values in {bad}")
    data = save(state, metadata={"format": FORMAT})
    sha = hashlib.sha256(data).hexdigest()
    manifest = {
        "format": FORMAT,
        "backbone": _backbone_entry(built, fingerprint or backbone_fingerprint(built.model)),
        "method": config_to_dict(built.method),
        "num_classes": built.num_classes,
        "class_names": list(class_names),
        "metrics": dict(metrics or {}),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tensors": {"file": path.name, "sha256": sha, "bytes": len(data)},
        "parent_version": parent_version,
        "train_config": dict(train_config or {}),
        "extra": dict(extra or {}),
    }
    manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)
    atomic_write(manifest_path_for(path), manifest_bytes)  # last: a manifest always means a complete tensor file
    fsync_dir(path.parent)
    _logger.info("published checkpoint %s (sha256 %s)", path, sha[:12])
    return CheckpointInfo(path=path, manifest_path=manifest_path_for(path), sha256=sha, manifest=manifest)


def sweep_temp_files(folder: Path, *, min_age_s: float = 0.0) -> list[Path]:
    """Remove ``*.tmp`` files left in ``folder`` by interrupted publishes.

    Args:
        folder: the checkpoint directory (missing is fine).
        min_age_s: keep temp files younger than this (a publish may be running right now elsewhere).

    Returns:
        The removed paths.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for tmp in folder.glob("*.tmp"):
        try:
            if now - tmp.stat().st_mtime >= min_age_s:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            pass  # already gone, or not ours to delete
    if removed:
        _logger.warning("removed %d stray temp file(s) in %s", len(removed), folder)
    return removed


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
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"manifest backbone entry is invalid: {exc}") from None


def check_backbone(manifest: Mapping[str, Any], built: BuiltModel, *, fingerprint: str | None = None) -> None:
    """The backbone a checkpoint was trained on must be the one it is loaded into.

    Name and image size must match; the weight-file sha256 must match when the manifest has one, otherwise the
    fingerprint of the frozen tensors must (random init, hub weights).

    Raises:
        CheckpointError: naming what differs.
    """
    b = manifest["backbone"]
    if b.get("name") != built.backbone.name:
        raise CheckpointError(f"checkpoint is for backbone {b.get('name')!r}, not {built.backbone.name!r}")
    if int(b.get("image_size", -1)) != built.backbone.image_size:
        raise CheckpointError(f"checkpoint is for image size {b.get('image_size')}, not {built.backbone.image_size}")
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


def _first_non_finite(state: Mapping[str, torch.Tensor]) -> str | None:
    for key in sorted(state):
        t = state[key]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return key
    return None


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

