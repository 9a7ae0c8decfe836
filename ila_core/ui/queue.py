"""The Review queue as one paged store query, shared by the Review tab and the ``/queue`` API endpoint.

Sorts: ``unlabelled`` (images without a label, oldest first), ``margin`` (smallest top-1/top-2 margin of the
version's scores first), ``disagree`` (the version's top-1 differs from the current label, most confident
first), ``unsure`` (marked unsure, newest first), ``newest``, ``unlike`` (lowest similarity to the nearest
confirmed image first). Scores come from the background scorer (:mod:`ila_core.serving.scorer`); the answer
says how many images the version has scored, so a partly scored queue says so.
"""

from __future__ import annotations

from typing import Any

from ..store import QUEUE_SORTS, QueuePage
from .errors import UserFacing
from .studio import Studio

__all__ = ["QUEUE_SORTS", "queue_page", "queue_answer", "resolve_version"]

MAX_PAGE = 500


def resolve_version(studio: Studio, version: str | int | None) -> int | None:
    """``None``, ``""`` or ``"serving"``: the served version's id (None without a model); else that version id."""
    if version in (None, "", "serving"):
        return studio.models.version_id
    try:
        return int(version)
    except (TypeError, ValueError):
        raise UserFacing(f"Unknown model version {version!r}.") from None


def queue_page(studio: Studio, *, sort: str, cultivar: str | None = None, split: str | None = None,
               version: str | int | None = None, limit: int = 48, offset: int = 0) -> QueuePage:  # fmt: skip
    """One page of a queue (see the module docstring for the sorts)."""
    if sort not in QUEUE_SORTS:
        raise UserFacing(f"Unknown sort order {sort!r}; use one of {', '.join(QUEUE_SORTS)}.")
    if not 1 <= int(limit) <= MAX_PAGE or int(offset) < 0:
        raise UserFacing(f"limit must be 1-{MAX_PAGE} and offset at least 0.")
    if split not in (None, "train", "holdout", "pool"):
        raise UserFacing(f"Unknown split {split!r}; use train, holdout or pool.")
    version_id = resolve_version(studio, version)
    with studio.store() as store:
        if cultivar is not None and cultivar not in store.cultivars():
            raise UserFacing(f"Unknown cultivar {cultivar!r}.")
        return store.queue_page(sort, version_id=version_id, cultivar=cultivar, split=split, limit=int(limit),
                                offset=int(offset))  # fmt: skip


_API_FIELDS = ("image_id", "sha256", "split", "label", "label_kind", "top1", "top1_prob", "margin",
               "nearest_similarity")  # fmt: skip  (no server paths)


def queue_answer(page: QueuePage, version_id: int | None) -> dict[str, Any]:
    """The JSON answer of ``/queue``: ``{"items": [{"image_id": ...}, ...], "total": N, "scored": M, ...}``."""
    items = [{k: getattr(item, k) for k in _API_FIELDS} for item in page.items]
    return {"items": items, "total": page.total, "scored": page.scored, "version_id": version_id}
