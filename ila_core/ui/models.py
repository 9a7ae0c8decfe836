"""Models tab: every adapter version with its holdout metrics, what changed against the active one, promote, roll back.

Promotion and rollback are admin actions checked inside the handlers. Both go through
:mod:`ila_core.serving.versions` with the serving predictor, so the new model is built and validated before
the store marks it active; a version that fails validation is never served.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr
import numpy as np

from ..analysis.figures import confusion_figure
from ..serving import versions as versions_lib
from .bind import bind
from .compare import diff_versions
from .errors import UserFacing, guarded
from .studio import Studio

__all__ = ["VERSION_HEADERS", "build_models_tab", "promote_version", "promotion_drop", "rollback_version",
           "version_rows"]  # fmt: skip

_logger = logging.getLogger(__name__)

VERSION_HEADERS = [
    "Version",
    "Kind",
    "Status",
    "Created",
    "Top-1",
    "Top-5",
    "Macro F1",
    "Holdout images",
    "Trained",
    "Job",
    "Parent",
    "Why (not) served",
    "Why it may be weak",
]


def _num(value: Any) -> str:
    return "" if value is None else f"{float(value):.3f}"


def version_rows(versions: list[dict[str, Any]], served: int | None) -> list[list[Any]]:
    """One table row per version, newest first."""
    rows = []
    for v in versions:
        m = v.get("metrics") or {}
        extra = (v.get("manifest") or {}).get("extra") or {}
        status = v["status"] + (" · serving" if v["id"] == served else "")
        trained = extra.get("epochs", "")
        if extra.get("steps_requested"):
            trained = f"{extra['steps']}/{extra['steps_requested']} steps"
        rows.append([f"v{v['id']}", v.get("kind", "ila"), status, (v.get("created_at") or "")[:16].replace("T", " "),
                     _num(m.get("top1")), _num(m.get("top5")), _num(m.get("macro_f1")), m.get("count", ""), trained,
                     v.get("job_id") or "", f"v{v['parent_id']}" if v.get("parent_id") else "",
                     v.get("note") or "", "; ".join(extra.get("warnings") or [])])  # fmt: skip
    return rows


def promotion_drop(studio: Studio, version_id: int) -> str | None:
    """Words for what serving ``version_id`` would cost on the holdout (None when it is not worse)."""
    with studio.store() as store:
        candidate, active = store.model_version(int(version_id)), store.active_version()
    if active is None or active["id"] == candidate["id"]:
        return None
    new, old = candidate.get("metrics") or {}, active.get("metrics") or {}
    drops = [f"{name} {float(new[key]):.3f} vs {float(old[key]):.3f} ({float(new[key]) - float(old[key]):+.3f})"
             for key, name in (("top1", "holdout top-1"), ("macro_f1", "macro-F1"))
             if new.get(key) is not None and old.get(key) is not None and float(new[key]) < float(old[key])]  # fmt: skip
    if not drops:
        return None
    same = new.get("holdout_key") and new.get("holdout_key") == old.get("holdout_key")
    where = "on the same holdout" if same else "(measured on different holdout snapshots)"
    return f"v{version_id} is worse than the served v{active['id']} {where}: {'; '.join(drops)}."


def promote_version(studio: Studio, request: gr.Request | None, version_id: int) -> str:
    """Validate, serve and activate ``version_id`` (admins only)."""
    user = studio.require_admin(request, "promote model versions")
    with studio.store() as store:
        versions_lib.promote(store, int(version_id), user=user, predictor=studio.models.predictor)
    studio.follow_model(changed=True)
    return f"Version {version_id} is now active and serving."


def rollback_version(studio: Studio, request: gr.Request | None, version_id: int | None = None) -> str:
    """Activate the previously active version (or ``version_id``), recorded as a rollback (admins only)."""
    user = studio.require_admin(request, "roll back model versions")
    with studio.store() as store:
        try:
            target = versions_lib.rollback(store, version_id, user=user, predictor=studio.models.predictor)
        except ValueError as exc:
            raise UserFacing(str(exc).capitalize() + ".") from None
    studio.follow_model(changed=True)
    return f"Rolled back: version {target} is active and serving again."


@guarded
def load(studio: Studio) -> list[Any]:
    """The versions table and the version picker (a candidate first, else the newest)."""
    with studio.store() as store:
        versions = store.model_versions()
    served = studio.models.version_id
    choices = [(f"v{v['id']} · {v['status']}", str(v["id"])) for v in versions]
    pick = next((str(v["id"]) for v in versions if v["status"] == "candidate"), None) or (
        str(versions[0]["id"]) if versions else None)  # fmt: skip
    return [version_rows(versions, served), gr.Dropdown(choices=choices, value=pick)]


@guarded
def inspect(studio: Studio, version: str | None) -> list[Any]:
    """The chosen version against its baseline: metrics, per-cultivar changes, confusion, flips."""
    if not version:
        return ["No model versions yet. The first one appears when a training job finishes.", [], [], None, []]
    diff = diff_versions(studio, int(version))
    v, base = diff.version, diff.baseline
    against = f"v{base['id']} ({base['status']})" if base else "nothing (first version)"
    lines = [f"**v{v['id']}** ({v['status']}) compared with {against}."]
    if diff.compared:
        lines.append(f"{len(diff.flipped)} of {diff.compared} holdout images changed prediction.")
    m = v.get("metrics") or {}
    names = (v.get("manifest") or {}).get("class_names") or list((m.get("per_class_accuracy") or {}).keys())
    fig = confusion_figure(np.asarray(m["confusion"]), names) if m.get("confusion") and names else None
    with studio.store() as store:
        thumbs = [
            (
                studio.thumbs.get(store.image(f["id"])),
                f"#{f['id']} · {f['before']} → {f['after']} · label {f['label'] or '—'}",
            )
            for f in diff.flipped[:30]
        ]
    label = (
        f"Holdout images whose prediction changed ({len(diff.flipped)})"
        if base
        else "Holdout images whose prediction changed (no baseline)"
    )
    return [" ".join(lines), diff.metrics, diff.per_class, fig, gr.Gallery(value=thumbs, label=label)]


@guarded
def on_promote(studio: Studio, version: str | None, pending: str | None, request: gr.Request) -> tuple[str, str | None]:
    """Serve the chosen version (admins); a worse one needs a second press."""
    studio.require_admin(request, "promote model versions")  # the role first: refusals reveal nothing else
    if not version:
        raise UserFacing("Choose a version first.")
    drop = promotion_drop(studio, int(version))
    if drop and pending != version:  # a worse version needs a second, deliberate press
        return f"{drop} Press Promote again to serve it anyway.", version
    return promote_version(studio, request, int(version)), None


@guarded
def on_rollback(studio: Studio, request: gr.Request) -> str:
    """Go back to the previous active version (admins)."""
    return rollback_version(studio, request)


def forget_pending(_version: str | None) -> None:
    """Another version was chosen: a pending second press no longer applies."""
    return None


def build_models_tab(studio: Studio, demo: gr.Blocks, tab: gr.Tab) -> None:
    """Lay out the Models tab inside the current ``gr.Tab`` and wire its events."""
    with gr.Row(elem_classes=["ila-toolbar"]):
        chosen = gr.Dropdown([], label="Version to inspect", scale=3, elem_id="ila-version")
        refresh = gr.Button("Refresh", scale=1, min_width=100)
        promote = gr.Button("Promote this version", variant="primary", scale=2, elem_id="ila-promote")
        rollback = gr.Button("Roll back to previous", variant="stop", scale=2, elem_id="ila-rollback")
    message = gr.Markdown(elem_id="ila-models-message")
    table = gr.Dataframe(headers=VERSION_HEADERS, value=[], label="Model versions", interactive=False, wrap=True,
                         elem_id="ila-versions", column_widths=["5%", "5%", "8%", "9%", "5%", "5%", "5%", "5%", "7%",
                                                                "4%", "5%", "19%", "18%"])  # fmt: skip
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            summary = gr.Markdown()
            metrics = gr.Dataframe(headers=["Metric", "Baseline", "This version", "Change"], value=[],
                                   label="Holdout metrics", interactive=False)  # fmt: skip
            per_class = gr.Dataframe(headers=["Cultivar", "Baseline", "This version", "Change"], value=[],
                                     label="Per-cultivar accuracy (regressions first)", interactive=False,
                                     max_height=320)  # fmt: skip
        with gr.Column(scale=6):
            confusion = gr.Plot(label="Confusion matrix (holdout)")
            flipped = gr.Gallery(label="Holdout images whose prediction changed", columns=6, height=220,
                                 allow_preview=True, preview=False, fit_columns=False, object_fit="cover")  # fmt: skip

    details = [summary, metrics, per_class, confusion, flipped]
    listing = [table, chosen]
    private = {"api_visibility": "private"}
    show = bind(load, studio)
    pending = gr.State(None)  # the worse version whose promotion waits for a second press
    demo.load(show, None, listing, **private, queue=False)
    tab.select(show, None, listing, **private, queue=False)
    refresh.click(show, None, listing, api_name="ui_versions", **private, queue=False)
    chosen.change(bind(inspect, studio), [chosen], details, api_name="ui_compare", **private, concurrency_id="model")
    chosen.change(forget_pending, [chosen], [pending], **private, queue=False)
    versions = {**private, "concurrency_limit": 1, "concurrency_id": "versions"}
    promote.click(bind(on_promote, studio), [chosen, pending], [message, pending], api_name="ui_promote",
                  **versions).then(show, None, listing, **private, queue=False)  # fmt: skip
    rollback.click(bind(on_rollback, studio), None, [message], api_name="ui_rollback", **versions).then(
        show, None, listing, **private, queue=False)  # fmt: skip
