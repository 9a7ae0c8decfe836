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

from .errors import UserFacing, guarded
from .labelling import as_text, new_event_id, record, undo
from .panel import exemplar_items, explain_view, flags_html, header_markdown, image_facts
from .scoring import predictions_for
from .serving import METHODS
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


def _picker(on_pick: Any, i: int) -> Any:
    """A handler for candidate button ``i`` (Gradio injects the request by annotation, so no lambda)."""

    def pick(state: dict[str, Any], request: gr.Request) -> tuple[Any, ...]:
        return on_pick(i, state, request)

    return pick


def build_classify_tab(studio: Studio) -> ClassifyTab:
    """Lay out the Classify tab inside the current ``gr.Tab`` and wire its events."""
    k = studio.options.top_k
    session = gr.State(_session())
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            upload = gr.File(label="Upload leaf images or a .zip", file_count="multiple",
                             file_types=["image", ".zip"], height=120, elem_id="ila-upload")  # fmt: skip
            with gr.Row():
                pool_btn = gr.Button("Open next unlabelled images", size="sm", variant="secondary")
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
                    undo_btn = gr.Button("Undo  (Z)", elem_id="ila-undo", interactive=False)
                with gr.Row(elem_classes=["ila-toolbar"]):
                    correction = gr.Dropdown(label="Correct to", choices=[], scale=3, elem_id="ila-correction")
                    correct_btn = gr.Button("Save correction", scale=1, elem_id="ila-correct", interactive=False)
            status = gr.Markdown(elem_id="ila-status")
            method = gr.Radio([(v, key) for key, v in METHODS.items()], value="gradcam", label="Explanation",
                              elem_id="ila-method")  # fmt: skip
            slider = gr.ImageSlider(label="Model view  |  heatmap overlay (drag to compare)", type="pil", height=360,
                                    elem_id="ila-slider", interactive=False)  # fmt: skip
            caption = gr.Markdown(elem_classes=["ila-muted"])
            exemplars = gr.Gallery(label="Nearest confirmed images of each candidate", columns=5, height=220,
                                   allow_preview=True, preview=False, fit_columns=False, object_fit="cover",
                                   elem_id="ila-exemplars")  # fmt: skip

    fast_out = [header, topk, flags, *picks, confirm, unsure, undo_btn, correct_btn, correction]
    slow_out = [slider, caption, exemplars, flags]

    def fast_values(state: dict[str, Any]) -> list[Any]:
        sel = state.get("sel")
        names = studio.models.class_names
        if sel is None or not state["ids"]:
            return [
                _EMPTY_HEADER,
                None,
                "",
                *[gr.Button(f"{i + 1}", interactive=False, visible=i < k) for i in range(MAX_PICKS)],
                *[gr.Button(interactive=False)] * 4,
                gr.Dropdown(choices=names, value=None),
            ]
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
                gr.Dropdown(choices=choices, value=facts.topk[0][0] if facts.topk else None)]  # fmt: skip

    @guarded
    def slow_values(state: dict[str, Any], how: str) -> list[Any]:
        sel = state.get("sel")
        if sel is None or not state["ids"] or studio.models.version_id is None:
            return [None, "", [], gr.skip()]
        facts = image_facts(studio, state["ids"][sel])
        pair, text, outside = explain_view(studio, facts, how)
        return [pair, text, exemplar_items(studio, facts), flags_html(studio, facts, outside)]

    @guarded
    def on_upload(files: list[str] | None, state: dict[str, Any], request: gr.Request) -> list[Any]:
        studio.username(request)
        if not files:
            return [gr.skip(), state, gr.skip(), gr.skip()]
        report = receive_uploads(studio, files, request)  # refused as a whole (nothing stored) or reported
        new_ids = report.image_ids
        lines = [as_text(report.describe())]
        lines += [f"- {as_text(r.file.rsplit('/', 1)[-1])}: {as_text(r.reason or '')}" for r in report.results
                  if r.status == "rejected" or (r.reason or "").startswith("label not saved")][:10]  # fmt: skip
        if new_ids and studio.models.version_id is not None:
            with studio.store() as store:
                predictions_for(store, studio.models, [store.image(i) for i in new_ids])
        ids = list(dict.fromkeys(state["ids"] + new_ids))
        sel = ids.index(new_ids[0]) if new_ids else state.get("sel")
        state = {"ids": ids, "sel": sel}
        return [_gallery(studio, ids), state, "\n".join(lines), None]

    @guarded
    def on_pool(state: dict[str, Any]) -> list[Any]:
        with studio.store() as store:
            rows = store.images(labelled=False, limit=_POOL_PAGE * 4)
            rows = [r for r in rows if r["id"] not in set(state["ids"]) and r.get("label_kind") is None][:_POOL_PAGE]
            if rows and studio.models.version_id is not None:
                predictions_for(store, studio.models, rows)
        if not rows:
            raise UserFacing("No unlabelled images left in the store.")
        ids = state["ids"] + [r["id"] for r in rows]
        state = {"ids": ids, "sel": len(state["ids"])}
        return [_gallery(studio, ids), state, f"Opened {len(rows)} unlabelled image(s) from the store."]

    @guarded
    def on_select(state: dict[str, Any], evt: gr.SelectData) -> dict[str, Any]:
        return {"ids": state["ids"], "sel": int(evt.index)}

    def step(state: dict[str, Any], delta: int) -> dict[str, Any]:
        if not state["ids"]:
            return state
        sel = 0 if state.get("sel") is None else state["sel"]
        return {"ids": state["ids"], "sel": max(0, min(len(state["ids"]) - 1, sel + delta))}

    def act(state: dict[str, Any], request: gr.Request, *, kind: str, label: str | None = None,
            source: str = "expert") -> tuple[dict[str, Any], str, Any]:  # fmt: skip
        if state.get("sel") is None or not state["ids"]:
            raise UserFacing("Select an image first.")
        image_id = state["ids"][state["sel"]]
        user = studio.username(request)
        with studio.store() as store:
            if kind == "undo":
                outcome = undo(store, image_id, user=user, client_event_id=new_event_id())
            else:
                current = store.current_label(image_id)
                outcome = record(
                    store,
                    image_id,
                    kind=kind,
                    label=label,
                    user=user,
                    source=source,
                    client_event_id=new_event_id(),
                    expected=None if current is None else current["label"],
                )
        advance = kind != "undo" and state["sel"] < len(state["ids"]) - 1
        new_state = step(state, 1) if advance else state
        return new_state, outcome.message, _gallery(studio, state["ids"])

    @guarded
    def on_pick(i: int, state: dict[str, Any], request: gr.Request) -> tuple[Any, ...]:
        facts = image_facts(studio, state["ids"][state["sel"]]) if state.get("sel") is not None else None
        if facts is None or i >= len(facts.topk):
            raise UserFacing("No candidate with that number.")
        return act(
            state, request, kind="label", label=facts.topk[i][0], source="model-accepted" if i == 0 else "expert"
        )

    @guarded
    def on_confirm(state: dict[str, Any], request: gr.Request) -> tuple[Any, ...]:
        return on_pick(0, state, request)

    @guarded
    def on_correct(label: str | None, state: dict[str, Any], request: gr.Request) -> tuple[Any, ...]:
        return act(state, request, kind="label", label=label)

    @guarded
    def on_unsure(state: dict[str, Any], request: gr.Request) -> tuple[Any, ...]:
        return act(state, request, kind="unsure")

    @guarded
    def on_undo(state: dict[str, Any], request: gr.Request) -> tuple[Any, ...]:
        return act(state, request, kind="undo")

    guarded_fast = guarded(fast_values)
    act_out = [session, status, gallery]

    def refresh(event: Any) -> None:
        event.then(guarded_fast, [session], fast_out, api_visibility="private").then(
            slow_values, [session, method], slow_out, api_visibility="private", concurrency_id="model"
        )

    refresh(upload.upload(on_upload, [upload, session], [gallery, session, report, upload], api_name="ui_upload",
                          api_visibility="private", concurrency_id="model"))  # fmt: skip
    refresh(pool_btn.click(on_pool, [session], [gallery, session, report], api_name="ui_open_pool",
                           api_visibility="private", concurrency_id="model"))  # fmt: skip
    refresh(clear_btn.click(lambda: (_session(), [], ""), None, [session, gallery, report], api_name="ui_clear",
                            api_visibility="private"))  # fmt: skip
    refresh(gallery.select(on_select, [session], [session], api_name="ui_select", api_visibility="private"))
    refresh(prev_btn.click(lambda s: step(s, -1), [session], [session], api_name="ui_prev", api_visibility="private"))
    refresh(next_btn.click(lambda s: step(s, 1), [session], [session], api_name="ui_next", api_visibility="private"))
    for i, btn in enumerate(picks):
        refresh(btn.click(_picker(on_pick, i), [session], act_out, api_name=f"ui_pick_{i + 1}",
                          api_visibility="private", concurrency_id="labels", concurrency_limit=4))  # fmt: skip
    for btn, fn, name in (
        (confirm, on_confirm, "ui_confirm"),
        (unsure, on_unsure, "ui_unsure"),
        (undo_btn, on_undo, "ui_undo"),
    ):
        refresh(btn.click(fn, [session], act_out, api_name=name, api_visibility="private", concurrency_id="labels",
                          concurrency_limit=4))  # fmt: skip
    refresh(correct_btn.click(on_correct, [correction, session], act_out, api_name="ui_correct",
                              api_visibility="private", concurrency_id="labels", concurrency_limit=4))  # fmt: skip
    method.change(slow_values, [session, method], slow_out, api_name="ui_explain", api_visibility="private",
                  concurrency_id="model")  # fmt: skip
    return ClassifyTab(correction=correction)
