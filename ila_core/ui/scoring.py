"""Top-k predictions of the served version for a few store images a user is waiting for (an upload, a page of
the pool): read the stored ones, compute and store the rest.

Predictions are append-only rows per (image, model version), each summarised in ``scores`` (top-1, margin)
for the Review queues; the Models tab compares two versions with them. Scoring every image is the background
scorer's work (:mod:`ila_core.serving.scorer`), not this module's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from ..store import LabelStore
from .media import open_stored
from .serving import ModelRuntime

__all__ = ["TopK", "margin", "predictions_for"]

_logger = logging.getLogger(__name__)

TopK = list[tuple[str, float]]
_BATCH = 16


def margin(topk: TopK) -> float:
    """Top-1 minus top-2 probability (1.0 when there is a single class)."""
    if not topk:
        return 1.0
    return float(topk[0][1]) - (float(topk[1][1]) if len(topk) > 1 else 0.0)


def _stored(row: dict[str, Any] | None) -> TopK | None:
    if row is None:
        return None
    return [(item["label"], float(item["prob"])) for item in row["topk"]]


def predictions_for(
    store: LabelStore,
    runtime: ModelRuntime,
    rows: Sequence[dict[str, Any]],
    *,
    compute_missing: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[int | None, dict[int, TopK]]:
    """Top-k of the served version for each image row (``id``, ``rel_path``, ``sha256``).

    Args:
        store: an open store (predictions are written through it).
        runtime: the serving runtime.
        rows: image rows.
        compute_missing: run the model for images without a stored prediction of this version.
        on_progress: called with (done, total) after each computed batch.

    Returns:
        ``(version id, {image id: top-k})``; images without a prediction are absent.
    """
    version = runtime.version_id
    if version is None:
        return None, {}
    out: dict[int, TopK] = {}
    missing: list[dict[str, Any]] = []
    for row in rows:
        found = _stored(store.latest_prediction(int(row["id"]), version))
        if found is not None:
            out[int(row["id"])] = found
        else:
            missing.append(row)
    if not compute_missing or not missing:
        return version, out
    for start in range(0, len(missing), _BATCH):
        batch = missing[start : start + _BATCH]
        images, kept = [], []
        for row in batch:
            try:
                images.append(open_stored(runtime.data_dir, row))
                kept.append(row)
            except OSError:
                _logger.warning("image %s missing on disk; not scored", row["id"])
        if not images:
            continue
        answered_by, topks = runtime.predict(images)
        if answered_by is not None:
            store.add_predictions(answered_by, [(int(r["id"]), t) for r, t in zip(kept, topks)])
        if answered_by == version:
            out.update({int(r["id"]): t for r, t in zip(kept, topks)})
        if on_progress is not None:
            on_progress(min(start + _BATCH, len(missing)), len(missing))
    return version, out
