"""Review queues and the pool walk as indexed, paged SQL over ``scores``, ``current_labels`` and ``images``.

``scores`` (migration 0003) holds the newest prediction of each (model version, image) summarised as top-1,
its probability, the top-1/top-2 margin and the image's similarity to its nearest confirmed image. Each sort
below is one query whose ``ORDER BY`` an index serves, so a page costs about the same at 1,000 and at 100,000
images; ``total`` is the same query counted. Archived images are never in a queue.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .base import StoreBase
from .validation import check_label, check_split

__all__ = ["QUEUE_SORTS", "QueueItem", "QueuePage", "QueueMixin"]

QUEUE_SORTS = ("unlabelled", "margin", "disagree", "unsure", "newest", "unlike")

_SELECT = """
SELECT i.id AS image_id, i.rel_path, i.sha256, i.split, c.name AS label, e.kind AS label_kind,
       s.top1, s.top1_prob, s.margin, s.nearest_similarity
"""
# Scores of the version joined in (LEFT: unscored images still show in the label-driven sorts).
_FROM = """
FROM {driver}
LEFT JOIN archived_images ar ON ar.image_id = i.id
LEFT JOIN current_labels cl ON cl.image_id = i.id
LEFT JOIN label_events e ON e.id = cl.event_id
LEFT JOIN cultivars c ON c.id = e.cultivar_id
"""
_COUNT_FROM = """
FROM {driver}
LEFT JOIN archived_images ar ON ar.image_id = i.id
"""
_IMAGES_FIRST = "images i LEFT JOIN scores s ON s.model_version_id = :version AND s.image_id = i.id"
_SCORES_FIRST = "scores s JOIN images i ON i.id = s.image_id"

# sort -> (driving tables, where, order by); each order by is the prefix of an index on the driving table.
_SORTS: dict[str, tuple[str, str, str]] = {
    "unlabelled": (_IMAGES_FIRST, "cl.image_id IS NULL", "i.id"),
    "newest": (_IMAGES_FIRST, "1", "i.id DESC"),
    "unsure": (_IMAGES_FIRST, "e.kind = 'unsure'", "i.id DESC"),
    "margin": (_SCORES_FIRST, "s.model_version_id = :version", "s.margin, s.image_id"),
    # the most confident disagreements first: a confident model that contradicts a label is worth a look
    "disagree": (_SCORES_FIRST, "s.model_version_id = :version AND e.kind = 'label' AND c.name != s.top1",
                 "s.top1_prob DESC, s.image_id"),  # fmt: skip
    "unlike": (_SCORES_FIRST, "s.model_version_id = :version AND s.nearest_similarity IS NOT NULL",
               "s.nearest_similarity, s.image_id"),  # fmt: skip
}


@dataclass(frozen=True)
class QueueItem:
    """One image of a queue page (score fields are None when the version has not scored it)."""

    image_id: int
    rel_path: str
    sha256: str
    split: str | None
    label: str | None  # current hard label ('label' kind), else None
    label_kind: str | None  # 'label', 'unsure', 'between' or None (unlabelled)
    top1: str | None
    top1_prob: float | None
    margin: float | None
    nearest_similarity: float | None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class QueuePage:
    """A page of a queue, how many images the whole queue holds, and how many the version has scored."""

    items: tuple[QueueItem, ...]
    total: int
    scored: int


class QueueMixin(StoreBase):
    """Queue reads and the ``scores`` writes of the background scorer."""

    def queue_page(
        self, sort: str, *, version_id: int | None, cultivar: str | None = None, split: str | None = None,
        limit: int = 48, offset: int = 0,
    ) -> QueuePage:  # fmt: skip
        """One page of a Review queue.

        Args:
            sort: one of :data:`QUEUE_SORTS`; ``margin``, ``disagree`` and ``unlike`` need ``version_id``.
            version_id: whose scores rank and annotate the page (None: no model; score sorts are empty).
            cultivar: only images whose current label or top-1 is this cultivar.
            split: 'train', 'holdout', 'pool' (unassigned) or None.
            limit: page size (at most 500).
            offset: page start.
        """
        if sort not in _SORTS:
            raise ValueError(f"unknown queue sort {sort!r} (expected one of {', '.join(QUEUE_SORTS)})")
        limit, offset = int(limit), int(offset)
        if not 0 < limit <= 500 or offset < 0:
            raise ValueError(f"limit must be 1-500 and offset >= 0, got {limit} and {offset}")
        scored = self.count_scored(version_id)
        driver, where, order = _SORTS[sort]
        if version_id is None and driver == _SCORES_FIRST:
            return QueuePage((), 0, 0)
        params: dict[str, Any] = {"version": -1 if version_id is None else int(version_id)}
        clauses = [where, "ar.image_id IS NULL"]
        if split is not None:
            if check_split(split) is None:
                clauses.append("i.split IS NULL")
            else:
                clauses.append("i.split = :split")
                params["split"] = split
        if cultivar is not None:
            clauses.append("((e.kind = 'label' AND c.name = :cultivar) OR s.top1 = :cultivar)")
            params["cultivar"] = check_label(cultivar)
        body = _FROM.format(driver=driver) + " WHERE " + " AND ".join(clauses)
        # The count skips the label joins when nothing filters on them (they are most of its cost at scale).
        labels_used = any(alias in " ".join(clauses) for alias in ("cl.", "e.", "c."))
        count_from = body if labels_used else _COUNT_FROM.format(driver=driver) + " WHERE " + " AND ".join(clauses)
        total = int(self._scalar(f"SELECT COUNT(*) {count_from}", params))
        rows = self._rows(f"{_SELECT} {body} ORDER BY {order} LIMIT :limit OFFSET :offset",
                          {**params, "limit": limit, "offset": offset})  # fmt: skip
        items = tuple(QueueItem(**{**r, "label": r["label"] if r["label_kind"] == "label" else None}) for r in rows)
        return QueuePage(items, total, scored)

    def count_scored(self, version_id: int | None) -> int:
        """Images (archived ones left out) that ``version_id`` has a score for."""
        if version_id is None:
            return 0
        return int(self._scalar(
            """SELECT COUNT(*) FROM scores s LEFT JOIN archived_images ar ON ar.image_id = s.image_id
               WHERE s.model_version_id = ? AND ar.image_id IS NULL""", [int(version_id)]))  # fmt: skip

    def unscored_images(self, version_id: int, *, after_id: int = 0, limit: int = 64) -> list[dict[str, Any]]:
        """Images (id, sha256, rel_path) after ``after_id`` that ``version_id`` has not scored, in id order."""
        return self._rows(
            """SELECT i.id, i.sha256, i.rel_path FROM images i
               LEFT JOIN scores s ON s.model_version_id = ? AND s.image_id = i.id
               LEFT JOIN archived_images ar ON ar.image_id = i.id
               WHERE i.id > ? AND s.image_id IS NULL AND ar.image_id IS NULL ORDER BY i.id LIMIT ?""",
            [int(version_id), int(after_id), int(limit)],
        )

    def scored_rows(self, version_id: int, *, after_id: int = 0, limit: int = 2048,
                    missing_similarity: bool = False) -> list[dict]:  # fmt: skip
        """Images (id, sha256) the version has scored, in id order; only those without a nearest-confirmed
        similarity yet when ``missing_similarity``."""
        missing = " AND s.nearest_similarity IS NULL" if missing_similarity else ""
        return self._rows(
            f"""SELECT i.id, i.sha256 FROM scores s JOIN images i ON i.id = s.image_id
                WHERE s.model_version_id = ? AND s.image_id > ?{missing} ORDER BY s.image_id LIMIT ?""",
            [int(version_id), int(after_id), int(limit)],
        )

    def set_similarities(self, version_id: int, similarities: Mapping[int, float]) -> int:
        """Store nearest-confirmed similarities of scored images (one transaction); returns rows updated."""
        values = [(float(v), int(version_id), int(k)) for k, v in similarities.items()]
        with self._write("similarities"):
            cursor = self.db.conn.executemany(
                "UPDATE scores SET nearest_similarity = ? WHERE model_version_id = ? AND image_id = ?", values
            )
        return int(cursor.rowcount)

    def unlabelled_images(self, *, after_id: int = 0, limit: int = 24) -> list[dict[str, Any]]:
        """Images without any current label event (not archived), ``id > after_id``, in id order: the pool walk."""
        return self._rows(
            """SELECT i.id, i.sha256, i.rel_path, i.split FROM images i
               LEFT JOIN current_labels cl ON cl.image_id = i.id
               LEFT JOIN archived_images ar ON ar.image_id = i.id
               WHERE i.id > ? AND cl.image_id IS NULL AND ar.image_id IS NULL ORDER BY i.id LIMIT ?""",
            [int(after_id), int(limit)],
        )

    def count_unlabelled(self) -> int:
        """Images without any current label event (not archived)."""
        return int(self._scalar(
            """SELECT COUNT(*) FROM images i LEFT JOIN current_labels cl ON cl.image_id = i.id
               LEFT JOIN archived_images ar ON ar.image_id = i.id
               WHERE cl.image_id IS NULL AND ar.image_id IS NULL"""))  # fmt: skip

    def _upsert_score(self, version_id: int, image_id: int, prediction_id: int,
                      topk: Sequence[tuple[str, float]], similarity: float | None) -> None:  # fmt: skip
        """Inside an open write: the image's score row for this version follows its newest prediction."""
        top1, p1 = topk[0][0], float(topk[0][1])
        margin = p1 - (float(topk[1][1]) if len(topk) > 1 else 0.0)
        self._exec(
            """INSERT INTO scores (model_version_id, image_id, prediction_id, top1, top1_prob, margin,
                   nearest_similarity) VALUES (?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (model_version_id, image_id) DO UPDATE SET prediction_id = excluded.prediction_id,
                   top1 = excluded.top1, top1_prob = excluded.top1_prob, margin = excluded.margin,
                   nearest_similarity = COALESCE(excluded.nearest_similarity, scores.nearest_similarity)""",
            [int(version_id), int(image_id), int(prediction_id), top1, p1, margin, similarity],
        )
