"""Classify tab: upload leaves, see top-k with explanations and exemplars, confirm or correct with the keyboard.

Layout: upload and the session's gallery on the left; on the right the selected image's prediction, flags,
one button per candidate (keys 1-5), confirm / unsure / undo (Enter, U, Z), a correction dropdown, the
image-vs-heatmap slider and the nearest confirmed images of each candidate. The session's image list is
``gr.State`` (per browser tab); everything else is read from the store on each event.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import gradio as gr

from .bind import bind
from .errors import UserFacing, guarded
from .history import History, action_entry, new_history, pushed, redo_last, undo_last
from .labelling import as_text, new_event_id, record
from .panel import exemplar_items, explain_view, flags_html, header_markdown, image_facts
from .scoring import predictions_for
from .serving import METHODS
from .removal import archive_image, delete_image_file
from .studio import Studio
from .uploads import MAX_UPLOAD_FILES, receive_uploads

__all__ = ["MAX_UPLOAD_FILES", "ClassifyTab", "build_classify_tab"]

_logger = logging.getLogger(__name__)

MAX_PICKS = 5
_EMPTY_HEADER = "Upload leaf images, or open the next unlabelled ones from the store."
_POOL_PAGE = 24


@dataclass
class ClassifyTab:
    """Components other tabs refresh."""

    correction: gr.Dropdown


def _session() -> dict[str, Any]:
    return {"ids": [], "sel": None}


def _gallery(studio: Studio, ids: list[int]) -> list[tuple[Any, str]]:
    items = []
    with studio.store() as store:
        for image_id in ids:
            row = store.image(image_id)
            label = row.get("label") or ("unsure" if row.get("label_kind") == "unsure" else "")
            items.append((studio.thumbs.get(row), f"#{image_id} {label}".strip()))
    return items


def _step(state: dict[str, Any], delta: int) -> dict[str, Any]:
    if not state["ids"]:
        return state
    sel = 0 if state.get("sel") is None else state["sel"]
    return {"ids": state["ids"], "sel": max(0, min(len(state["ids"]) - 1, sel + delta))}


def _selected(state: dict[str, Any]) -> int:
    if state.get("sel") is None or not state["ids"]:
        raise UserFacing("Select an image first.")
    return int(state["ids"][state["sel"]])


def _show(state: dict[str, Any], image_ids: list[int]) -> dict[str, Any]:
    """The session with the first of ``image_ids`` selected (added to the session when it is not in it)."""
    if not image_ids:
        return state
    ids = list(state["ids"]) if image_ids[0] in state["ids"] else [*state["ids"], image_ids[0]]
    return {"ids": ids, "sel": ids.index(image_ids[0])}


def label_action(studio: Studio, state: dict[str, Any], history: History, request: gr.Request, *, kind: str,
                 label: str | None = None, source: str = "expert") -> tuple[Any, ...]:  # fmt: skip
    """Store a label or unsure event for the selected image, push it on the session's undo stack, move on."""
    image_id = _selected(state)
    user = studio.username(request)
    with studio.store() as store:
        current = store.current_label(image_id)
        seen = None if current is None else current["label"]  # conflict detection: the label the user saw
        outcome = record(store, image_id, kind=kind, label=label, user=user, source=source,
                         client_event_id=new_event_id(), expected=seen)  # fmt: skip
    if outcome.created:
        history = pushed(history, action_entry(kind, [(image_id, outcome.event_id)], label=label, source=source))
    new_state = _step(state, 1) if state["sel"] < len(state["ids"]) - 1 else state
    return new_state, outcome.message, _gallery(studio, new_state["ids"]), history


def undo_action(studio: Studio, state: dict[str, Any], history: History, request: gr.Request,
                *, redo: bool = False) -> tuple[Any, ...]:  # fmt: skip
    """Undo (or redo) this session's newest action wherever it was, and show the image it restored."""
    user = studio.username(request)
    with studio.store() as store:
        history, message, ids = (redo_last if redo else undo_last)(store, history, user=user)
    new_state = _show(state, ids)
    return new_state, message, _gallery(studio, new_state["ids"]), history


def archive_action(studio: Studio, state: dict[str, Any], history: History, request: gr.Request) -> tuple[Any, ...]:
    """Archive the selected image (undoable) and take it out of this session's list."""
    image_id = _selected(state)
    message, done = archive_image(studio, image_id, request)
    if done is not None:
        history = pushed(history, done)
    ids = [i for i in state["ids"] if i != image_id]
    sel = None if not ids else min(state["sel"], len(ids) - 1)
    new_state = {"ids": ids, "sel": sel}
    return new_state, message, _gallery(studio, ids), history, None


def delete_action(studio: Studio, state: dict[str, Any], armed: int | None,
                  request: gr.Request) -> tuple[Any, ...]:  # fmt: skip
    """First press arms (names what goes); a second press on the same image deletes its file for good."""
    image_id = _selected(state)
    studio.require_admin(request, "delete image files")
    if armed != image_id:
        text = (f"Press **Delete file for good** again to delete image #{image_id}'s file. This cannot be undone "
                "(its label history stays); Archive hides an image and can be undone.")  # fmt: skip
        return gr.skip(), text, gr.skip(), image_id
    message = delete_image_file(studio, image_id, request)
    ids = [i for i in state["ids"] if i != image_id]
    new_state = {"ids": ids, "sel": None if not ids else min(state["sel"], len(ids) - 1)}
    return new_state, message, _gallery(studio, ids), None


def _pool_page(store: Any, after: int, seen: set[int]) -> tuple[list[dict[str, Any]], bool]:
    """Up to a page of unlabelled images after id ``after`` not open in this session; at the end, from the oldest.

    Returns:
        ``(rows, wrapped)``: ``wrapped`` says the walk reached the last unlabelled image and started again.
    """
    for start in (after, 0) if after else (0,):
        rows: list[dict[str, Any]] = []
        cursor = start
        while len(rows) < _POOL_PAGE and (page := store.unlabelled_images(after_id=cursor, limit=_POOL_PAGE * 2)):
            rows += [r for r in page if r["id"] not in seen]
            cursor = page[-1]["id"]
        if rows:
            return rows[:_POOL_PAGE], start != after
    return [], False


def _picker(studio: Studio, i: int) -> Any:
    """A handler for candidate button ``i`` (a plain function: Gradio injects the request by annotation)."""

    def pick(state: dict[str, Any], history: History, request: gr.Request) -> tuple[Any, ...]:
        return on_pick(studio, i, state, history, request)

    return pick


# -- handlers (bound to the studio in the builder) ---------------------------------------------------


def fast_values(studio: Studio, state: dict[str, Any]) -> list[Any]:
    """Header, top-k, flags, candidate buttons and the correction list of the selected image (no model work)."""
    k = studio.options.top_k
    sel = state.get("sel")
    if sel is None or not state["ids"]:
        idle = [gr.Button(f"{i + 1}", interactive=False, visible=i < k) for i in range(MAX_PICKS)]
        return [_EMPTY_HEADER, None, "", *idle, gr.Button(interactive=False), gr.Button(interactive=False),
                gr.Button(interactive=True),  # undo takes back the session's last action, wherever it was
                gr.Button(interactive=False), gr.Dropdown(choices=studio.models.class_names, value=None),
                ""]  # fmt: skip
    facts = image_facts(studio, state["ids"][sel])
    label_value = {name: p for name, p in facts.topk} if facts.topk else None
    buttons = []
    for i in range(MAX_PICKS):
        if i < len(facts.topk):
            name, p = facts.topk[i]
            buttons.append(gr.Button(f"{i + 1}  {name}  {p:.0%}", interactive=True, visible=i < k))
        else:
            buttons.append(gr.Button(f"{i + 1}", interactive=False, visible=i < k))
    has_model = bool(facts.topk)
    with studio.store() as store:
        choices = store.cultivars()
    return [header_markdown(facts), label_value, flags_html(studio, facts), *buttons,
            gr.Button(interactive=has_model), gr.Button(interactive=True), gr.Button(interactive=True),
            gr.Button(interactive=True),
            gr.Dropdown(choices=choices, value=facts.topk[0][0] if facts.topk else None),
            "Top-k is final; the heatmap follows in a moment…" if has_model else ""]  # fmt: skip


@guarded
def slow_values(studio: Studio, state: dict[str, Any], how: str) -> list[Any]:
    """The explanation slider, its caption, the exemplars and the flags with the explanation's verdict."""
    sel = state.get("sel")
    if sel is None or not state["ids"] or studio.models.version_id is None:
        return [None, "", [], gr.skip()]
    facts = image_facts(studio, state["ids"][sel])
    pair, text, outside = explain_view(studio, facts, how)
    return [pair, text, exemplar_items(studio, facts), flags_html(studio, facts, outside)]


@guarded
def on_upload(studio: Studio, files: list[str] | None, state: dict[str, Any], request: gr.Request) -> list[Any]:
    """Store the upload (refused as a whole, or reported per file), predict the new images, select the first."""
    studio.username(request)
    if not files:
        return [gr.skip(), state, gr.skip(), gr.skip()]
    report = receive_uploads(studio, files, request)
    new_ids = report.image_ids
    lines = [as_text(report.describe())]
    lines += [f"- {as_text(r.file.rsplit('/', 1)[-1])}: {as_text(r.reason or '')}" for r in report.results
              if r.status == "rejected" or (r.reason or "").startswith("label not saved")][:10]  # fmt: skip
    if new_ids and studio.models.version_id is not None:
        with studio.store() as store:
            predictions_for(store, studio.models, [store.image(i) for i in new_ids])
    ids = list(dict.fromkeys(state["ids"] + new_ids))
    sel = ids.index(new_ids[0]) if new_ids else state.get("sel")
    return [_gallery(studio, ids), {"ids": ids, "sel": sel}, "\n".join(lines), None]


@guarded
def on_pool(studio: Studio, state: dict[str, Any], after: int) -> list[Any]:
    """Open the next page of unlabelled images after the last one this browser tab opened."""
    seen = set(state["ids"])
    with studio.store() as store:
        rows, wrapped = _pool_page(store, int(after or 0), seen)
        left = store.count_unlabelled()
        if rows and studio.models.version_id is not None:
            predictions_for(store, studio.models, rows)
    if not rows:
        raise UserFacing("No unlabelled images left in the store." if not left else
                         f"All {left:,} unlabelled images are already open in this session.")  # fmt: skip
    ids = state["ids"] + [r["id"] for r in rows]
    text = f"Opened {len(rows)} unlabelled image(s) (#{rows[0]['id']}–#{rows[-1]['id']}); {left:,} unlabelled in all."
    if wrapped:
        text = "Reached the last unlabelled image; started again from the oldest not open here. " + text
    return [_gallery(studio, ids), {"ids": ids, "sel": len(state["ids"])}, text, rows[-1]["id"]]


@guarded
def on_select(state: dict[str, Any], evt: gr.SelectData) -> dict[str, Any]:
    """Select the clicked gallery image."""
    return {"ids": state["ids"], "sel": int(evt.index)}


@guarded
def on_pick(studio: Studio, i: int, state: dict[str, Any], hist: History, request: gr.Request) -> tuple[Any, ...]:
    """Label the selected image with candidate ``i`` (top-1 counts as accepting the model's answer)."""
    facts = image_facts(studio, state["ids"][state["sel"]]) if state.get("sel") is not None else None
    if facts is None or i >= len(facts.topk):
        raise UserFacing("No candidate with that number.")
    source = "model-accepted" if i == 0 else "expert"
    return label_action(studio, state, hist, request, kind="label", label=facts.topk[i][0], source=source)


@guarded
def on_confirm(studio: Studio, state: dict[str, Any], hist: History, request: gr.Request) -> tuple[Any, ...]:
    """Accept the top-1."""
    return on_pick(studio, 0, state, hist, request)


@guarded
def on_correct(studio: Studio, label: str | None, state: dict[str, Any], hist: History,
               request: gr.Request) -> tuple[Any, ...]:  # fmt: skip
    """Label the selected image with the cultivar chosen in the dropdown."""
    return label_action(studio, state, hist, request, kind="label", label=label)


@guarded
def on_unsure(studio: Studio, state: dict[str, Any], hist: History, request: gr.Request) -> tuple[Any, ...]:
    """Mark the selected image unsure."""
    return label_action(studio, state, hist, request, kind="unsure")


@guarded
def on_undo(studio: Studio, state: dict[str, Any], hist: History, request: gr.Request) -> tuple[Any, ...]:
    """Undo the session's newest action."""
    return undo_action(studio, state, hist, request)


@guarded
def on_redo(studio: Studio, state: dict[str, Any], hist: History, request: gr.Request) -> tuple[Any, ...]:
    """Redo the session's newest undone action."""
    return undo_action(studio, state, hist, request, redo=True)


@guarded
def on_archive(studio: Studio, state: dict[str, Any], hist: History, request: gr.Request) -> tuple[Any, ...]:
    """Archive the selected image."""
    return archive_action(studio, state, hist, request)


@guarded
def on_delete(studio: Studio, state: dict[str, Any], pending: int | None, request: gr.Request) -> tuple[Any, ...]:
    """Arm, then delete the selected image's file for good (admins)."""
    return delete_action(studio, state, pending, request)


def on_clear() -> tuple[Any, ...]:
    """Start an empty session."""
    return _session(), [], ""


def on_prev(state: dict[str, Any]) -> dict[str, Any]:
    """Select the previous image."""
    return _step(state, -1)


def on_next(state: dict[str, Any]) -> dict[str, Any]:
    """Select the next image."""
    return _step(state, 1)


# -- layout and wiring ------------------------------------------------------------------------------


def build_classify_tab(studio: Studio, history: gr.State | None = None) -> ClassifyTab:
    """Lay out the Classify tab inside the current ``gr.Tab`` and wire its events.

    Args:
        studio: the running studio.
        history: the page's undo/redo stacks (shared with the Review tab); a new one when None.
    """
    k = studio.options.top_k
    session = gr.State(_session())
    history = history if history is not None else gr.State(new_history())
    armed = gr.State(None)  # the image whose file deletion waits for a second press
    pool_at = gr.State(0)  # id of the last image this browser tab opened from the pool: the next click goes on
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            upload = gr.File(label="Upload leaf images or a .zip", file_count="multiple",
                             file_types=["image", ".zip"], height=120, elem_id="ila-upload")  # fmt: skip
            with gr.Row():
                pool_btn = gr.Button("Open next unlabelled images", size="sm", variant="secondary",
                                     elem_id="ila-open-pool")  # fmt: skip
                clear_btn = gr.Button("Clear session", size="sm", variant="secondary")
            gallery = gr.Gallery(label="This session", columns=4, height=430, allow_preview=False, preview=False,
                                 fit_columns=False, object_fit="cover", elem_id="ila-gallery")  # fmt: skip
            with gr.Row():
                prev_btn = gr.Button("◀ Previous", elem_id="ila-prev", size="sm")
                next_btn = gr.Button("Next ▶", elem_id="ila-next", size="sm")
            report = gr.Markdown(elem_classes=["ila-muted"])
        with gr.Column(scale=7, min_width=420):
            header = gr.Markdown(_EMPTY_HEADER, elem_id="ila-header")
            with gr.Row(equal_height=False):
                topk = gr.Label(label="Prediction (top-k)", num_top_classes=k, elem_id="ila-topk", scale=3)
                with gr.Column(scale=2, min_width=220):
                    flags = gr.HTML(elem_id="ila-flags")
            with gr.Group(elem_id="ila-classify-actions"):
                with gr.Row(elem_id="ila-candidates"):
                    picks = [
                        gr.Button(
                            f"{i + 1}",
                            visible=i < k,
                            elem_id=f"ila-pick-{i + 1}",
                            min_width=80,
                            elem_classes=["ila-pick"],
                            interactive=False,
                        )
                        for i in range(MAX_PICKS)
                    ]
                with gr.Row():
                    confirm = gr.Button("Confirm top-1", variant="primary", elem_id="ila-confirm",
                                        interactive=False)  # fmt: skip
                    unsure = gr.Button("Unsure  (U)", elem_id="ila-unsure", interactive=False)
                    undo_btn = gr.Button("Undo  (Z)", elem_id="ila-undo")
                    redo_btn = gr.Button("Redo  (Y)", elem_id="ila-redo")
                with gr.Row(elem_classes=["ila-toolbar"]):
                    correction = gr.Dropdown(label="Correct to", choices=[], scale=3, elem_id="ila-correction")
                    correct_btn = gr.Button("Save correction", scale=1, elem_id="ila-correct", interactive=False)
                with gr.Row():
                    archive_btn = gr.Button("Archive image (hide a mistaken upload)", size="sm", elem_id="ila-archive")
                    delete_btn = gr.Button("Delete file for good (admins)", size="sm", variant="stop",
                                           elem_id="ila-delete")  # fmt: skip
            status = gr.Markdown(elem_id="ila-status")
            method = gr.Radio([(v, key) for key, v in METHODS.items()], value="gradcam", label="Explanation",
                              elem_id="ila-method")  # fmt: skip
            slider = gr.ImageSlider(label="Photo  |  heatmap overlay (drag to compare)", type="pil", max_height=420,
                                    elem_id="ila-slider", interactive=False, buttons=["fullscreen"])  # fmt: skip
            caption = gr.Markdown(elem_classes=["ila-muted"])
            exemplars = gr.Gallery(label="Nearest confirmed images of each candidate", columns=5, height=220,
                                   allow_preview=True, preview=False, fit_columns=False, object_fit="cover",
                                   elem_id="ila-exemplars")  # fmt: skip

    fast_out = [header, topk, flags, *picks, confirm, unsure, undo_btn, correct_btn, correction, caption]
    slow_out = [slider, caption, exemplars, flags]
    fast, slow = guarded(bind(fast_values, studio)), bind(slow_values, studio)
    act_out = [session, status, gallery, history]
    private = {"api_visibility": "private"}
    labels = {**private, "concurrency_id": "labels", "concurrency_limit": 4}

    def refresh(event: Any) -> None:
        event.then(fast, [session], fast_out, **private).then(slow, [session, method], slow_out, **private,
                                                               concurrency_id="model")  # fmt: skip

    refresh(upload.upload(bind(on_upload, studio), [upload, session], [gallery, session, report, upload],
                          api_name="ui_upload", **private, concurrency_id="model"))  # fmt: skip
    refresh(pool_btn.click(bind(on_pool, studio), [session, pool_at], [gallery, session, report, pool_at],
                           api_name="ui_open_pool", **private, concurrency_id="model"))  # fmt: skip
    refresh(clear_btn.click(on_clear, None, [session, gallery, report], api_name="ui_clear", **private))
    refresh(gallery.select(on_select, [session], [session], api_name="ui_select", **private))
    refresh(prev_btn.click(on_prev, [session], [session], api_name="ui_prev", **private))
    refresh(next_btn.click(on_next, [session], [session], api_name="ui_next", **private))
    for i, btn in enumerate(picks):
        refresh(btn.click(_picker(studio, i), [session, history], act_out, api_name=f"ui_pick_{i + 1}", **labels))
    for btn, fn, name in ((confirm, on_confirm, "ui_confirm"), (unsure, on_unsure, "ui_unsure"),
                          (undo_btn, on_undo, "ui_undo"), (redo_btn, on_redo, "ui_redo")):  # fmt: skip
        refresh(btn.click(bind(fn, studio), [session, history], act_out, api_name=name, **labels))
    refresh(correct_btn.click(bind(on_correct, studio), [correction, session, history], act_out,
                              api_name="ui_correct", **labels))  # fmt: skip
    refresh(archive_btn.click(bind(on_archive, studio), [session, history], [*act_out, armed], api_name="ui_archive",
                              **labels))  # fmt: skip
    refresh(delete_btn.click(bind(on_delete, studio), [session, armed], [session, status, gallery, armed],
                             api_name="ui_delete", **{**labels, "concurrency_limit": 1}))  # fmt: skip
    method.change(slow, [session, method], slow_out, api_name="ui_explain", **private, concurrency_id="model")
    return ClassifyTab(correction=correction)
