"""The Classify tab's detail panel for one image: header, top-k, flags, explanation and exemplars.

Pure functions of (studio, image id) that return display values; ``classify.py`` wires them to components.
Each part is computed separately so the fast ones (top-k) reach the page before the slow ones (heatmaps).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .errors import UserFacing
from .labelling import as_text
from .media import open_stored, thumbnail
from .scoring import TopK, margin, predictions_for
from .serving import METHODS
from .studio import Studio

_logger = logging.getLogger(__name__)

__all__ = ["ImageFacts", "exemplar_items", "explain_view", "flags_html", "header_markdown", "image_facts"]


@dataclass(frozen=True)
class ImageFacts:
    """What the panel shows about one image."""

    image_id: int
    sha256: str
    name: str  # display name (already HTML-escaped by the store)
    split: str
    label: str | None  # current hard label, "unsure", or None
    label_raw: str | None  # the current event's cultivar (for conflict detection)
    topk: TopK
    version_id: int | None
    row: dict[str, Any]


def image_facts(studio: Studio, image_id: int) -> ImageFacts:
    """Store row, current label and the served version's top-k (computed and stored if missing)."""
    with studio.store() as store:
        row = store.image(int(image_id))
        current = store.current_label(int(image_id))
        version, preds = (None, {})
        if studio.models.version_id is not None:
            version, preds = predictions_for(store, studio.models, [row])
    label = None
    if current is not None:
        label = "unsure" if current["kind"] == "unsure" else current["label"]
    return ImageFacts(
        image_id=int(image_id), sha256=row["sha256"], name=row.get("original_name") or f"image {image_id}",
        split=row.get("split") or "pool", label=label, label_raw=None if current is None else current["label"],
        topk=preds.get(int(image_id), []), version_id=version, row=row,
    )  # fmt: skip


def header_markdown(facts: ImageFacts) -> str:
    """One line: name, id, split, current label, model version."""
    label = as_text(facts.label) if facts.label else "not labelled"
    model = f"model v{facts.version_id}" if facts.version_id is not None else "no model yet"
    parts = [f"**{facts.name}**", f"image #{facts.image_id}", facts.split, f"label: **{label}**", model]
    return " &nbsp;·&nbsp; ".join(parts)


def flags_html(studio: Studio, facts: ImageFacts, outside_leaf: float | None = None) -> str:
    """Visible notes: low confidence, small margin, attribution off the leaf, disagreement with the label."""
    notes: list[tuple[str, str]] = []
    if facts.version_id is None:
        notes.append(("info", as_text(studio.models.unavailable())))  # names an unreadable model file, or the job
    elif facts.topk:
        top_label, top_p = facts.topk[0]
        if top_p < studio.options.low_confidence:
            notes.append(("warn", f"Low confidence: top-1 is {top_p:.0%} (below {studio.options.low_confidence:.0%})."))
        if len(facts.topk) > 1 and margin(facts.topk) < 0.1:
            runner = facts.topk[1][0]
            gap = margin(facts.topk)
            pair = f"{as_text(top_label)} and {as_text(runner)}"
            text = f"Close call between {pair} (margin {gap:.0%}); check the contrast map."
            notes.append(("warn", text))
        if facts.label and facts.label not in ("unsure", top_label):
            notes.append(("warn", f"The model disagrees with the current label ({as_text(facts.label)})."))
        unlike = _unlikeness(studio, facts)
        if unlike is not None and unlike.unusual:
            notes.append(("warn", as_text(unlike.describe())))
        twin = unlike.near_duplicate if unlike is not None else None
        if twin is not None:
            notes.append(("info", f"Looks like a near-duplicate of confirmed image #{twin.image_id} "
                                  f"({as_text(twin.label)}, similarity {twin.similarity:.3f})."))  # fmt: skip
    if outside_leaf is not None and outside_leaf > studio.options.off_leaf_warning:
        text = (f"{outside_leaf:.0%} of the attribution lies outside the leaf: the model may be using the "
                "background (tags, rulers, shadows).")  # fmt: skip
        notes.append(("warn", text))
    if not notes:
        notes.append(("ok", "Confident prediction; attribution on the leaf."))
    return "".join(f'<div class="ila-note ila-note-{kind}">{text}</div>' for kind, text in notes)


def _unlikeness(studio: Studio, facts: ImageFacts) -> Any:
    """How unlike the confirmed images this one is (None when it cannot be said, e.g. the file is gone)."""
    try:
        return studio.models.unlikeness(load_full(studio, facts), facts.sha256, exclude_image=facts.image_id)
    except (OSError, ValueError, RuntimeError, UserFacing) as exc:
        _logger.info("no unlikeness score for image %d: %s", facts.image_id, exc)
        return None


def load_full(studio: Studio, facts: ImageFacts) -> Image.Image:
    """The stored image."""
    return open_stored(studio.data_dir, facts.row)


def explain_view(studio: Studio, facts: ImageFacts, method: str) -> tuple[tuple[Image.Image, Image.Image], str, float]:
    """(model view, overlay) for the slider, a caption, and the off-leaf share."""
    image = load_full(studio, facts)
    target = facts.topk[0][0] if facts.topk else None
    other = facts.topk[1][0] if len(facts.topk) > 1 else None
    done = studio.models.explain(image, key=facts.sha256, method=method, target=target,
                                 other=other if method == "contrast" else None)  # fmt: skip
    what = METHODS[method]
    if method == "contrast" and done.target and done.other:
        what = f"why {as_text(done.target)} and not {as_text(done.other)}"
    elif done.target:
        what = f"{what} for {as_text(done.target)}"
    caption = (f"{what} · computed on a {done.grid_side}×{done.grid_side} token grid · "
               f"{done.outside_leaf:.0%} of attribution outside the leaf · the whole photo is shown; the dimmed "
               "border lies outside the part the model sees")  # fmt: skip
    return (done.view, done.overlay), caption, done.outside_leaf


def exemplar_items(studio: Studio, facts: ImageFacts, per_cultivar: int = 2) -> list[tuple[Image.Image, str]]:
    """Gallery items: the nearest confirmed images of each top-k candidate, captioned."""
    if not facts.topk:
        return []
    cultivars = [name for name, _ in facts.topk[: min(len(facts.topk), 5)]]
    image = load_full(studio, facts)
    found = studio.models.exemplars(image, facts.sha256, cultivars, per_cultivar=per_cultivar,
                                    exclude_image=facts.image_id)  # fmt: skip
    items = []
    for ex in found:
        row = {"sha256": "", "rel_path": ex.rel_path, "id": ex.image_id}
        try:
            thumb = thumbnail(open_stored(studio.data_dir, row))
        except OSError:
            continue
        items.append((thumb, f"{ex.cultivar} {ex.similarity:.2f}"))
    return items
