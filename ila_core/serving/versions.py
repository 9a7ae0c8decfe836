"""Model versions: publish a trained checkpoint, promote it (or not), roll back to any earlier one.

A version is a checkpoint under ``<data_dir>/adapters/`` plus a ``model_versions`` row holding its path,
sha256, manifest, holdout metrics, parent version and data snapshot. The store keeps exactly one version
active and records every switch, so "rollback" is "activate an older version with reason rollback".
Serving follows the store: :class:`~ila_core.serving.predictor.Predictor` builds and validates the new
model before swapping, and these functions take an optional predictor so the swap happens first and a
version that fails validation is never marked active.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..backbone import BuiltModel
from ..checkpoint import CheckpointInfo, check_state, save_checkpoint, verify_files
from ..store import LabelStore
from .paths import adapters_dir, checkpoint_path

if TYPE_CHECKING:
    from .predictor import Predictor

__all__ = [
    "publish_version",
    "promote",
    "rollback",
    "previous_version_id",
    "promotion_stack",
]

_logger = logging.getLogger(__name__)


def publish_version(
    store: LabelStore,
    data_dir: Path,
    built: BuiltModel,
    *,
    class_names: list[str],
    metrics: Mapping[str, Any],
    snapshot_event_id: int,
    parent_id: int | None = None,
    job_id: int | None = None,
    train_config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    fingerprint: str | None = None,
    kind: str = "ila",
) -> tuple[int, CheckpointInfo]:
    """Write the checkpoint atomically, check it reads back, record a 'candidate' version.

    Returns:
        ``(version_id, checkpoint info)``.

    Raises:
        OSError: the write failed (e.g. "File too large"); no version row is written.
        CheckpointError: the written file does not validate against the model (never recorded).
    """
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    name = f"v{stamp}-{'j%d-' % job_id if job_id is not None else ''}{uuid.uuid4().hex[:8]}.safetensors"
    info = save_checkpoint(
        built, adapters_dir(data_dir) / name, class_names=class_names, metrics=metrics, parent_version=parent_id,
        train_config=train_config, extra={**(extra or {}), "job_id": job_id, "snapshot_event_id": snapshot_event_id},
        fingerprint=fingerprint,
    )  # fmt: skip
    _, state = verify_files(info.path)  # what the app will read: same bytes, same hash
    check_state(state, built.model)
    version_id = store.add_model_version(
        path=info.path.relative_to(Path(data_dir)).as_posix(), sha256=info.sha256, manifest=info.manifest,
        metrics=dict(metrics), parent_id=parent_id, snapshot_event_id=snapshot_event_id, job_id=job_id, kind=kind,
    )  # fmt: skip
    return version_id, info


def promote(
    store: LabelStore, version_id: int, *, user: str | None = None, predictor: Predictor | None = None,
    data_dir: Path | None = None, reason: str = "promote",
) -> None:  # fmt: skip
    """Make ``version_id`` active; with a predictor, its model is built and validated (and swapped in) first.

    Raises:
        UnknownVersion: no such version.
        CheckpointError: the checkpoint does not validate; nothing changes.
    """
    version = store.model_version(version_id)
    if predictor is not None:
        predictor.activate(version)
    elif data_dir is not None:
        verify_files(checkpoint_path(data_dir, version))
    store.activate_version(version_id, user=user, reason=reason)
    _logger.info("model version %d active (%s by %s)", version_id, reason, user or "-")


def promotion_stack(history: list[dict[str, Any]]) -> list[int]:
    """The versions a run of rollbacks walks back through, oldest first, replayed from the switch history.

    A promotion puts a version on top; a rollback returns to an earlier entry and drops what was above it, so
    pressing "roll back" twice goes two promotions back instead of flipping between the last two versions.
    """
    stack: list[int] = []
    for event in history:
        target = int(event["version_id"])
        if event["action"] == "rollback" and target in stack:
            del stack[stack.index(target) + 1 :]
        else:  # a promotion (or a rollback to a version that had left the stack): it is on top now
            if target in stack:
                stack.remove(target)
            stack.append(target)
    return stack


def previous_version_id(store: LabelStore) -> int | None:
    """The version a rollback returns to: the one promoted before the active one (None if there is none)."""
    active = store.active_version()
    if active is None:
        return None
    stack = promotion_stack(store.version_history())
    if not stack or stack[-1] != active["id"]:
        return stack[-1] if stack else None
    return stack[-2] if len(stack) >= 2 else None


def rollback(
    store: LabelStore, version_id: int | None = None, *, user: str | None = None, predictor: Predictor | None = None,
    data_dir: Path | None = None,
) -> int:  # fmt: skip
    """Activate an earlier version (default: the one active before the current), recorded as a rollback.

    Returns:
        The version id now active.

    Raises:
        ValueError: no version to roll back to.
    """
    target = version_id if version_id is not None else previous_version_id(store)
    if target is None:
        raise ValueError("no earlier model version to roll back to")
    promote(store, target, user=user, predictor=predictor, data_dir=data_dir, reason="rollback")
    return target
