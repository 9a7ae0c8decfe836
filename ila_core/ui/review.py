"""Review tab: a queue of images worth an expert's look, filters, bulk relabel of a selection, undo.

Sort orders: smallest top-1/top-2 margin of a model version (uncertain first), disagreement between that
version's top-1 and the current label, images marked unsure, how unlike the confirmed images an image is (its
nearest confirmed image's similarity, lowest first, from the stored frozen embeddings), unlabelled, newest. Each
is one indexed, paged query over the stored scores (:mod:`ila_core.ui.queue`), which the background scorer
fills for the served version after every switch; the page says how many images that version has scored.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from ..store import QueuePage
from .bind import bind
from .errors import UserFacing, guarded
from .history import History, action_entry, new_history, pushed
from .labelling import bulk_relabel, new_event_id, undo
from .queue import queue_page
from .removal import archive_selected
from .studio import Studio

__all__ = ["SORTS", "build_review_tab", "review_page", "review_queue"]

_logger = logging.getLogger(__name__)

SORTS = {"margin": "Smallest margin (top-1 − top-2)", "disagree": "Model disagrees with label",
         "unsure": "Marked unsure", "unlike": "Unlike the confirmed images", "unlabelled": "Unlabelled (oldest first)",
         "newest": "Newest first"}  # fmt: skip
ALL = "All"
SPLITS = {ALL: None, "train": "train", "holdout": "holdout", "pool (unassigned)": "pool"}
QUEUE_SIZE = 48
QUEUE_HEADERS = ["Image", "Label", "Model top-1", "Confidence", "Margin", "Split"]


def _version_choices(studio: Studio) -> list[tuple[str, str]]:
    with studio.store() as store:
        versions = store.model_versions()
    served = studio.models.version_id
    choices = [
        (f"v{v['id']} ({v['status']}{', serving' if v['id'] == served else ''})", str(v["id"])) for v in versions
    ]
    return [("Serving model", "serving"), *choices]


def review_page(
    studio: Studio, *, sort: str, cultivar: str | None, split: str | None, version: str | None,
    limit: int = QUEUE_SIZE, offset: int = 0,
) -> tuple[list[dict[str, Any]], QueuePage]:  # fmt: skip
    """A page of the queue as dicts (``id``, ``row``, ``label``, ``topk``, ``margin``, ``similarity``) and the page.

    One indexed store query (:func:`ila_core.ui.queue.queue_page`); the scores come from the background scorer.
    """
    page = queue_page(studio, sort=sort, cultivar=cultivar, split=split, version=version, limit=limit,
                      offset=offset)  # fmt: skip
    items = []
    for it in page.items:
        label = it.label if it.label_kind == "label" else ("unsure" if it.label_kind == "unsure" else None)
        row = {"id": it.image_id, "sha256": it.sha256, "rel_path": it.rel_path, "split": it.split}
        topk = [(it.top1, float(it.top1_prob))] if it.top1 is not None else []
        items.append({"id": it.image_id, "row": row, "label": label, "topk": topk, "margin": it.margin,
                      "similarity": it.nearest_similarity})  # fmt: skip
    return items, page


def review_queue(
    studio: Studio, *, sort: str, cultivar: str | None, split: str | None, version: str | None,
    limit: int = QUEUE_SIZE, offset: int = 0,
) -> list[dict[str, Any]]:  # fmt: skip
    """The queue's items only (see :func:`review_page`), best candidates first."""
    return review_page(studio, sort=sort, cultivar=cultivar, split=split, version=version, limit=limit,
                       offset=offset)[0]  # fmt: skip


def _detail_row(item: dict[str, Any]) -> list[Any]:
    name, p = item["topk"][0] if item["topk"] else ("", None)
    return [f"#{item['id']}", item["label"] or "—", name, "" if p is None else f"{p:.0%}",
            "" if item["margin"] is None else f"{item['margin']:.3f}", item["row"].get("split") or "pool"]  # fmt: skip


def _short(item: dict[str, Any]) -> str:
    return f"#{item['id']}" + (f" {item['label']}" if item["label"] else "")


def selection_items(studio: Studio, chosen: list[str]) -> list[tuple[Any, str]]:
    """Thumbnails of the selected images, captioned with id and current label, in selection order."""
    items = []
    with studio.store() as store:
        for c in chosen:
            row = store.image(int(c))
            label = row.get("label") if row.get("label_kind") == "label" else row.get("label_kind")
            items.append((studio.thumbs.get(row), f"#{row['id']} {label or 'no label'}"))
    return items


@guarded
def load_filters(studio: Studio) -> list[Any]:
    """Cultivar, version and relabel choices as the store has them now."""
    with studio.store() as store:
        names = store.cultivars()
    return [gr.Dropdown(choices=[ALL, *names]), gr.Dropdown(choices=_version_choices(studio)),
            gr.Dropdown(choices=names)]  # fmt: skip


@guarded
def on_refresh(studio: Studio, how: str, name: str, where: str, ver: str, number: float | None) -> list[Any]:
    """One page of the chosen queue: thumbnails, details, and what the page and the scoring cover."""
    number = max(1, int(number or 1))
    items, page = review_page(studio, sort=how, cultivar=None if name in (None, ALL) else name,
                              split=SPLITS.get(where), version=ver, offset=(number - 1) * QUEUE_SIZE)  # fmt: skip
    with studio.store() as store:
        stored = store.count_images()
    thumbs = [(studio.thumbs.get(i["row"]), _short(i)) for i in items]
    choices = [(f"#{i['id']}", str(i["id"])) for i in items]
    pages = max(1, -(-page.total // QUEUE_SIZE))
    note = (f"Page {number} of {pages}: showing {len(items)} of {page.total:,} image(s) in this queue." if items
            else f"This queue holds {page.total:,} image(s) ({pages} page(s))." if page.total
            else "Nothing to review with these filters.")  # fmt: skip
    if studio.models.version_id is None:
        note += " No trained model yet: margin and disagreement need one."
    else:
        note += f" The model has scored {page.scored:,} of {stored:,} images"
        note += "." if page.scored >= stored else "; the rest are being scored in the background."
    return [thumbs, [_detail_row(i) for i in items], gr.CheckboxGroup(choices=choices, value=[]),
            [i["id"] for i in items], note]  # fmt: skip


@guarded
def on_pick(ids: list[int], current: list[str], evt: gr.SelectData) -> list[str]:
    """Toggle the clicked image in the selection."""
    chosen = str(ids[int(evt.index)])
    return [c for c in current if c != chosen] if chosen in current else [*current, chosen]


@guarded
def on_apply(studio: Studio, label: str | None, chosen: list[str], hist: History,
             request: gr.Request) -> tuple[str, History]:  # fmt: skip
    """Relabel the selection (one entry on the page's undo stack)."""
    user = studio.username(request)
    ids = list(dict.fromkeys(int(c) for c in chosen))
    with studio.store() as store:
        events, text = bulk_relabel(store, ids, label or "", user=user)
    hist = pushed(hist, action_entry("label", list(zip(ids, events)), label=label, source="bulk"))
    return text + " Refresh the queue to see the new order; Undo (Classify tab, Z) takes it back.", hist


@guarded
def on_archive(studio: Studio, chosen: list[str], hist: History, request: gr.Request) -> tuple[str, History]:
    """Archive the selection (one entry on the page's undo stack)."""
    return archive_selected(studio, chosen, hist, studio.username(request))


@guarded
def on_selection(studio: Studio, chosen: list[str]) -> list[tuple[Any, str]]:
    """Thumbnails of the selection."""
    return selection_items(studio, chosen or [])


@guarded
def on_undo(studio: Studio, chosen: list[str], request: gr.Request) -> str:
    """Undo the last label change of each selected image."""
    if not chosen:
        raise UserFacing("Select at least one image.")
    user = studio.username(request)
    done, skipped = 0, 0
    with studio.store() as store:
        for c in chosen:
            try:
                undo(store, int(c), user=user, client_event_id=new_event_id("undo"))
                done += 1
            except ValueError:  # NothingToUndo: that image has no label event
                skipped += 1
    return f"Undid the last change on {done} image(s)" + (f"; {skipped} had nothing to undo." if skipped else ".")

def select_all_shown(ids: list[int]) -> list[str]:
    """Every image of the page."""
    return [str(i) for i in ids]


def clear_selection() -> list[str]:
    """No image."""
    return []


def build_review_tab(studio: Studio, demo: gr.Blocks, tab: gr.Tab, history: gr.State | None = None) -> None:
    """Lay out the Review tab inside the current ``gr.Tab`` and wire its events.

    ``history`` is the page's undo stack: a bulk relabel is one entry, so the Classify tab's Undo takes it back.
    """
    shown = gr.State([])
    history = history if history is not None else gr.State(new_history())
    with gr.Row(elem_classes=["ila-toolbar"]):
        sort = gr.Dropdown([(v, k) for k, v in SORTS.items()], value="margin", label="Sort", scale=3)
        cultivar = gr.Dropdown([ALL], value=ALL, label="Cultivar (label or prediction)", scale=2)
        split = gr.Dropdown(list(SPLITS), value=ALL, label="Split", scale=2)
        version = gr.Dropdown([("Serving model", "serving")], value="serving", label="Model version", scale=2)
        page_no = gr.Number(1, label="Page", precision=0, minimum=1, scale=1, min_width=90, elem_id="ila-review-page")
        refresh = gr.Button("Refresh queue", variant="primary", scale=1, min_width=140, elem_id="ila-review-refresh")
    with gr.Row(equal_height=False):
        with gr.Column(scale=7):
            gallery = gr.Gallery(label="Queue (click an image to select it)", columns=6, height=470,
                                 allow_preview=False, preview=False, fit_columns=False, object_fit="cover",
                                 elem_id="ila-review-gallery")  # fmt: skip
            details = gr.Dataframe(headers=QUEUE_HEADERS, value=[], label="Queue details", interactive=False,
                                   max_height=260, elem_id="ila-review-table")  # fmt: skip
        with gr.Column(scale=4, min_width=300):
            selected = gr.CheckboxGroup([], label="Selected images", elem_id="ila-review-selected")
            picked = gr.Gallery(label="Selection", columns=5, height=170, allow_preview=False, preview=False,
                                object_fit="contain", elem_id="ila-review-picked")  # fmt: skip
            with gr.Row():
                select_all = gr.Button("Select all shown", size="sm")
                clear = gr.Button("Clear selection", size="sm")
            relabel_to = gr.Dropdown([], label="Relabel selected as", elem_id="ila-bulk-label")
            with gr.Row():
                apply = gr.Button("Apply to selected", variant="primary", elem_id="ila-bulk-apply")
                undo_btn = gr.Button("Undo last change on selected", elem_id="ila-bulk-undo")
            archive_btn = gr.Button("Archive selected", size="sm", variant="stop", elem_id="ila-bulk-archive")
            message = gr.Markdown(elem_id="ila-review-message")

    filters = [cultivar, version, relabel_to]
    demo.load(bind(load_filters, studio), None, filters, api_visibility="private", queue=False)
    tab.select(bind(load_filters, studio), None, filters, api_visibility="private", queue=False)
    refresh.click(bind(load_filters, studio), None, filters, api_visibility="private", queue=False).then(
        bind(on_refresh, studio),
        [sort, cultivar, split, version, page_no],
        [gallery, details, selected, shown, message],
        api_name="ui_review",
        api_visibility="private",
        concurrency_id="reads",  # one indexed query now, no model work: it no longer waits behind /predict
        concurrency_limit=4,
    )
    gallery.select(on_pick, [shown, selected], [selected], api_visibility="private", queue=False)
    select_all.click(select_all_shown, [shown], [selected], api_visibility="private", queue=False)
    clear.click(clear_selection, None, [selected], api_visibility="private", queue=False)
    apply.click(bind(on_apply, studio), [relabel_to, selected, history], [message, history], api_name="ui_bulk_relabel",
                api_visibility="private", concurrency_id="labels", concurrency_limit=4)  # fmt: skip
    archive_btn.click(bind(on_archive, studio), [selected, history], [message, history], api_name="ui_bulk_archive",
                      api_visibility="private", concurrency_id="labels", concurrency_limit=4)  # fmt: skip
    selected.change(bind(on_selection, studio), [selected], [picked], api_visibility="private", queue=False,
                    show_progress="hidden")  # fmt: skip
    undo_btn.click(bind(on_undo, studio), [selected], [message], api_name="ui_bulk_undo", api_visibility="private",
                   concurrency_id="labels", concurrency_limit=4)  # fmt: skip
