"""One import result per file (or per annotation), and the summary that groups them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["ImportResult", "Status", "summarise"]

# imported: stored (an image, or a label event for an annotation); duplicate: already there; skipped: nothing to
# do and nothing wrong (a cancelled annotation, a label that is already current); rejected: with a reason.
Status = Literal["imported", "duplicate", "skipped", "rejected"]


@dataclass(frozen=True)
class ImportResult:
    """What happened to one file: ``status`` with a ``reason`` where there is one.

    ``line`` is the line of the label file (CSV, annotation list, metadata) that named the file, kept out of
    ``reason`` so that equal reasons group; ``layout`` is the layout the importer read (see ``detect_layout``).
    """

    file: str  # as the user knows it: relative to the import root, ``archive.zip!inner/path`` in a zip
    status: Status
    reason: str | None = None
    image_id: int | None = None
    label: str | None = None
    split: str | None = None
    line: int | None = None
    layout: str | None = None
    kind: str | None = None  # label kind recorded or asked for: 'label', 'unsure' or 'between'

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for one JSON line."""
        return asdict(self)


def summarise(results: Iterable[ImportResult]) -> dict[str, Any]:
    """Counts per status, labels applied, the layouts read and the most common rejection reasons."""
    results = list(results)
    status = Counter(r.status for r in results)
    reasons = Counter(r.reason for r in results if r.status == "rejected")
    layouts = Counter(r.layout for r in results if r.layout)
    imported = [r for r in results if r.status == "imported"]
    return {
        "total": len(results),
        "imported": status["imported"],
        "duplicate": status["duplicate"],
        "skipped": status["skipped"],
        "rejected": status["rejected"],
        "labelled": sum(1 for r in imported if r.label is not None and r.kind in (None, "label")),
        "unsure_or_between": sum(1 for r in imported if r.kind in ("unsure", "between")),
        "layout": ", ".join(layouts) if layouts else None,
        "reasons": dict(reasons.most_common(20)),
    }
