"""Metrics of a stored version on a job's holdout, so promotion compares versions on the same images.

A version's stored metrics carry the fingerprint of the holdout they were measured on. When a later job's
holdout is the same set (same images, same labels), those metrics are reused; otherwise the version is loaded
(as it is served: adapters fused) and evaluated on the new holdout.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from ..adapters import fuse_for_inference
from ..checkpoint import CheckpointError, load_built
from ..training.dataset import ImageDataset, TrainingSet
from ..training.loop import evaluate
from ..training.transforms import eval_transform, preprocess_for
from .paths import checkpoint_path

__all__ = ["holdout_key", "metrics_on_holdout"]

_logger = logging.getLogger(__name__)


def holdout_key(data: TrainingSet) -> str:
    """Fingerprint of the holdout: which images, with which labels."""
    items = sorted(f"{s.sha256}:{data.class_names[s.label]}" for s in data.holdout)
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def metrics_on_holdout(
    version: Mapping[str, Any], data: TrainingSet, data_dir: Path, *, device: str = "cpu", batch_size: int = 32
) -> tuple[dict[str, Any] | None, str | None]:
    """``(metrics, None)`` of ``version`` on ``data.holdout``, or ``(None, why it cannot be compared)``."""
    stored = dict(version.get("metrics") or {})
    key = holdout_key(data)
    if stored.get("holdout_key") == key:
        return stored, None
    if not data.holdout:
        return None, "no holdout images"
    try:
        built, manifest = load_built(checkpoint_path(data_dir, version), data_dir, device=device)
    except (CheckpointError, OSError) as exc:
        return None, f"version {version.get('id')} could not be loaded ({exc})"
    names = list(manifest["class_names"])
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({data.class_names[s.label] for s in data.holdout} - set(index))
    if unknown:
        return None, f"version {version.get('id')} does not know cultivar {unknown[0]!r}"
    samples = [replace(s, label=index[data.class_names[s.label]]) for s in data.holdout]
    fuse_for_inference(built.model)
    ratio = float((manifest.get("train_config") or {}).get("resize_ratio", 1.34))
    prep = preprocess_for(built.model, built.backbone.image_size, ratio)
    loader = DataLoader(ImageDataset(samples, eval_transform(prep)), batch_size=batch_size)
    metrics = evaluate(built.model, loader, device=device, class_names=names).to_dict()
    _logger.info("version %s on this holdout: top-1 %.3f", version.get("id"), metrics["top1"])
    return {**metrics, "holdout_key": key}, None
