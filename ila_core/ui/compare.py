"""What changed between two model versions: headline metrics, per-class accuracy, images that flipped.

Metrics come from the versions' stored holdout evaluation. Flipped images are the holdout images whose
top-1 differs between the two versions; their predictions are stored per version, so the second look is
instant.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .media import open_stored
from .studio import Studio

__all__ = ["METRIC_NAMES", "VersionDiff", "diff_versions", "metric_rows"]

_logger = logging.getLogger(__name__)

METRIC_NAMES = (
    ("top1", "Top-1 accuracy"),
    ("top5", "Top-5 accuracy"),
    ("macro_f1", "Macro F1"),
    ("loss", "Holdout loss"),
)
MAX_COMPARED = 200


@dataclass(frozen=True)
class VersionDiff:
    """Differences of ``version`` against ``baseline``."""

    version: dict[str, Any]
    baseline: dict[str, Any] | None
    metrics: list[list[Any]]  # [name, baseline, version, delta]
    per_class: list[list[Any]]  # [cultivar, baseline, version, delta]
    flipped: list[dict[str, Any]] = field(default_factory=list)  # {id, row, label, before, after}
    compared: int = 0


def _fmt(value: Any) -> str:
    return "" if value is None else f"{float(value):.3f}"


def metric_rows(version: dict[str, Any], baseline: dict[str, Any] | None) -> list[list[Any]]:
    """Headline metrics side by side with deltas (empty cells where a version has no value)."""
    new, old = version.get("metrics") or {}, (baseline or {}).get("metrics") or {}
    rows = []
    for key, title in METRIC_NAMES:
        a, b = old.get(key), new.get(key)
        delta = f"{float(b) - float(a):+.3f}" if a is not None and b is not None else ""
        rows.append([title, _fmt(a), _fmt(b), delta])
    return rows


def _per_class(version: dict[str, Any], baseline: dict[str, Any] | None) -> list[list[Any]]:
    new = (version.get("metrics") or {}).get("per_class_accuracy") or {}
    old = ((baseline or {}).get("metrics") or {}).get("per_class_accuracy") or {}
    rows = []
    for name in list(dict.fromkeys([*old, *new])):
        a, b = old.get(name), new.get(name)
        delta = float(b) - float(a) if a is not None and b is not None else None
        rows.append([name, _fmt(a), _fmt(b), "" if delta is None else f"{delta:+.3f}"])
    rows.sort(key=lambda r: float(r[3]) if r[3] else 0.0)  # regressions first
    return rows


def diff_versions(studio: Studio, version_id: int, *, with_images: bool = True) -> VersionDiff:
    """Compare ``version_id`` with the active version (or with its parent when it is the active one)."""
    with studio.store() as store:
        version = store.model_version(int(version_id))
        active = store.active_version()
        baseline = active if active is not None and active["id"] != version["id"] else None
        if baseline is None and version.get("parent_id") is not None:
            baseline = store.model_version(version["parent_id"])
        holdout = store.images(split="holdout", limit=MAX_COMPARED) if with_images and baseline else []
    diff = VersionDiff(version, baseline, metric_rows(version, baseline), _per_class(version, baseline))
    if not holdout or baseline is None:
        return diff
    before = _top1(studio, baseline, holdout)
    after = _top1(studio, version, holdout)
    flipped = []
    for row in holdout:
        a, b = before.get(row["id"]), after.get(row["id"])
        if a is not None and b is not None and a != b:
            flipped.append({"id": row["id"], "row": row, "label": row.get("label"), "before": a, "after": b})
    return VersionDiff(version, baseline, diff.metrics, diff.per_class, flipped, len(holdout))


def _top1(studio: Studio, version: dict[str, Any], rows: list[dict[str, Any]]) -> dict[int, str]:
    """Top-1 per image for a version: stored predictions first, the rest computed and stored."""
    out: dict[int, str] = {}
    missing = []
    with studio.store() as store:
        for row in rows:
            found = store.latest_prediction(int(row["id"]), version["id"])
            if found is not None:
                out[int(row["id"])] = found["topk"][0]["label"]
            else:
                missing.append(row)
    for start in range(0, len(missing), 16):
        batch = missing[start : start + 16]
        try:
            images = [open_stored(studio.data_dir, r) for r in batch]
        except OSError:
            _logger.warning("holdout image missing on disk; comparison skips its batch")
            continue
        topks = studio.models.predict_with(version, images)
        with studio.store() as store:
            store.add_predictions(version["id"], [(int(r["id"]), t) for r, t in zip(batch, topks)])
        out.update({int(r["id"]): t[0][0] for r, t in zip(batch, topks)})
    return out
