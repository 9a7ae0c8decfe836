"""Model versions (adapter checkpoints), their activation history, and stored predictions.

A version row points at a checkpoint file by path and sha256; the file itself is written and
validated by :mod:`ila_core.checkpoint`. Exactly one version is ``active`` at a time (a partial
unique index enforces it); activating another retires the previous one, and every switch is a
``version_events`` row, so rollback is "activate the older one" and the history stays complete.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .base import load_json_columns
from .errors import UnknownImage, UnknownJob, UnknownVersion
from .queue import QueueMixin
from .validation import check_rel_path, check_sha256, check_user, dump_json

__all__ = ["VersionsMixin", "ACTIONS", "KINDS"]

ACTIONS = ("promote", "rollback")
KINDS = ("probe", "ila", "baseline")  # closed-form head; ILA adapters; another PETL method


class VersionsMixin(QueueMixin):
    """Methods over ``model_versions``, ``version_events`` and ``predictions`` (and their ``scores``)."""

    def add_model_version(
        self,
        *,
        path: str,
        sha256: str,
        manifest: dict[str, Any],
        metrics: dict[str, Any],
        parent_id: int | None,
        snapshot_event_id: int,
        job_id: int | None,
        kind: str = "ila",
    ) -> int:
        """Record a trained checkpoint as a 'candidate' version.

        Args:
            path: checkpoint path relative to the data directory.
            sha256: hex digest of the checkpoint file.
            manifest: the checkpoint's JSON manifest.
            metrics: holdout metrics.
            parent_id: version the training started from, if any.
            snapshot_event_id: last label event the training set included.
            job_id: the job that produced it, if any.
            kind: ``probe``, ``ila`` or ``baseline`` (see :data:`KINDS`).

        Returns:
            The new version id.
        """
        path, sha256 = check_rel_path(path), check_sha256(sha256)
        manifest_json, metrics_json = dump_json(manifest, "manifest"), dump_json(metrics, "metrics")
        if kind not in KINDS:
            raise ValueError(f"unknown model version kind {kind!r} (expected one of {', '.join(KINDS)})")
        if int(snapshot_event_id) < 0:
            raise ValueError(f"snapshot_event_id must be >= 0, got {snapshot_event_id}")
        with self._write("model version"):
            if parent_id is not None:
                self._require_version(parent_id)
            if job_id is not None and self._scalar("SELECT 1 FROM jobs WHERE id = ?", [job_id]) is None:
                raise UnknownJob(f"unknown job id {job_id!r}")
            cursor = self._exec(
                """INSERT INTO model_versions (parent_id, path, sha256, manifest, metrics, snapshot_event_id,
                       job_id, status, kind, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'candidate', ?, ?)""",
                [parent_id, path, sha256, manifest_json, metrics_json, int(snapshot_event_id), job_id, kind,
                 self._now()],
            )
            return int(cursor.lastrowid)

    def set_version_note(self, version_id: int, note: str | None) -> None:
        """Say why a version is (not) served, e.g. "kept: holdout top-1 0.62 below the probe's 0.85"."""
        if note is not None and (not isinstance(note, str) or len(note) > 2000):
            raise ValueError("a version note must be a string of at most 2000 characters")
        with self._write("version note"):
            self._require_version(version_id)
            self._exec("UPDATE model_versions SET note = ? WHERE id = ?", [note, version_id])

    def model_version(self, version_id: int) -> dict[str, Any]:
        """One version with ``manifest`` and ``metrics`` parsed; raises UnknownVersion."""
        row = self._row("SELECT * FROM model_versions WHERE id = ?", [version_id])
        if row is None:
            raise UnknownVersion(f"unknown model version id {version_id!r}")
        return load_json_columns(row, "manifest", "metrics")

    def model_versions(self) -> list[dict[str, Any]]:
        """All versions, newest first."""
        rows = self._rows("SELECT * FROM model_versions ORDER BY id DESC")
        return [load_json_columns(row, "manifest", "metrics") for row in rows]

    def active_version(self) -> dict[str, Any] | None:
        """The version being served, or None (base model without a trained adapter)."""
        row = self._row("SELECT * FROM model_versions WHERE status = 'active'")
        return load_json_columns(row, "manifest", "metrics")

    def activate_version(self, version_id: int, *, user: str | None = None, reason: str = "promote") -> None:
        """Make ``version_id`` the active version and retire the previous one, with a history row.

        Activating the version that is already active changes nothing and records nothing.

        Args:
            version_id: version to serve.
            user: who switched.
            reason: 'promote' or 'rollback'.
        """
        if reason not in ACTIONS:
            raise ValueError(f"unknown activation reason {reason!r} (expected one of {', '.join(ACTIONS)})")
        user = check_user(user)
        with self._write("version switch"):
            self._require_version(version_id)
            previous = self._scalar("SELECT id FROM model_versions WHERE status = 'active'")
            if previous == version_id:
                return
            # Retire first: the partial unique index allows one 'active' row at any moment.
            self._exec("UPDATE model_versions SET status = 'retired' WHERE status = 'active'")
            self._exec("UPDATE model_versions SET status = 'active' WHERE id = ?", [version_id])
            self._exec(
                """INSERT INTO version_events (version_id, previous_version_id, action, user, created_at)
                   VALUES (?, ?, ?, ?, ?)""",
                [version_id, previous, reason, user, self._now()],
            )

    def version_history(self) -> list[dict[str, Any]]:
        """Activation and rollback events in order."""
        return self._rows("SELECT * FROM version_events ORDER BY id")

    def add_predictions(
        self, model_version_id: int, rows: Sequence[tuple[int, Sequence[tuple[str, float]]]], *,
        similarities: Mapping[int, float] | None = None,
    ) -> list[int]:  # fmt: skip
        """Store top-k predictions of one model version (append-only; one transaction) and their scores.

        Args:
            model_version_id: the version that predicted.
            rows: ``(image_id, [(label, probability), ...])`` per image, best first.
            similarities: image id -> similarity to its nearest confirmed image, where known.

        Returns:
            The new prediction ids.
        """
        similarities = similarities or {}
        prepared = [(int(image_id), _topk_json(topk), list(topk)) for image_id, topk in rows]
        ids: list[int] = []
        with self._write("predictions"):
            self._require_version(model_version_id)
            now = self._now()
            for image_id, topk_json, topk in prepared:
                if self._scalar("SELECT 1 FROM images WHERE id = ?", [image_id]) is None:
                    raise UnknownImage(f"unknown image id {image_id!r}")
                cursor = self._exec(
                    "INSERT INTO predictions (image_id, model_version_id, topk, created_at) VALUES (?, ?, ?, ?)",
                    [image_id, model_version_id, topk_json, now],
                )
                ids.append(int(cursor.lastrowid))
                similarity = similarities.get(image_id)
                self._upsert_score(model_version_id, image_id, ids[-1], topk,
                                   None if similarity is None else float(similarity))  # fmt: skip
        return ids

    def latest_prediction(self, image_id: int, model_version_id: int | None = None) -> dict[str, Any] | None:
        """Newest stored prediction for an image (optionally of one version); ``topk`` is a list of dicts."""
        if model_version_id is None:
            row = self._row("SELECT * FROM predictions WHERE image_id = ? ORDER BY id DESC LIMIT 1", [image_id])
        else:
            row = self._row(
                "SELECT * FROM predictions WHERE image_id = ? AND model_version_id = ? ORDER BY id DESC LIMIT 1",
                [image_id, model_version_id],
            )
        return load_json_columns(row, "topk")

    def _require_version(self, version_id: int) -> None:
        if self._scalar("SELECT 1 FROM model_versions WHERE id = ?", [version_id]) is None:
            raise UnknownVersion(f"unknown model version id {version_id!r}")


def _topk_json(topk: Sequence[tuple[str, float]]) -> str:
    items = []
    for label, prob in topk:
        prob = float(prob)
        if not isinstance(label, str) or not label:
            raise ValueError(f"prediction label must be a non-empty string, got {label!r:.80}")
        if not math.isfinite(prob) or not 0.0 <= prob <= 1.0:
            raise ValueError(f"prediction probability for {label!r:.80} must be in [0, 1], got {prob}")
        items.append({"label": label, "prob": prob})
    if not items:
        raise ValueError("a prediction needs at least one (label, probability) pair")
    return dump_json(items, "top-k")
