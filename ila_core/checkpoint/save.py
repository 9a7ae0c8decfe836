"""Publish a checkpoint atomically: tensors first, manifest last; sweep what a killed save left behind."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..adapters import adapter_state_dict, config_to_dict
from ..backbone import BuiltModel
from ..fsutil import atomic_write, fsync_dir
from .build import backbone_fingerprint
from .format import FORMAT, SUFFIX, CheckpointInfo, _first_non_finite, manifest_path_for

_logger = logging.getLogger(__name__)


# -- saving --------------------------------------------------------------------------------------


def _backbone_entry(built: BuiltModel, fingerprint: str) -> dict[str, Any]:
    b = built.backbone
    return {
        "name": b.name,
        "image_size": b.image_size,
        "weights": b.weights,
        "weights_file": None if b.weights_file is None else str(b.weights_file),
        "normalization": b.normalization,
        "pos_embed_resize": b.pos_embed_resize,
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
