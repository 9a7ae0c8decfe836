"""Train tab: one-click retrain (quick preset), live progress that survives a refresh, curves, cancel, history.

Above the button, an estimate of the next retrain's time on this machine (:mod:`ila_core.jobs.estimate`, from
the pace the last job measured here), refreshed when an option changes or a job ends; it says when a GPU or
``torchrun`` is the way past a long job. The click only queues a job row (admins only, checked inside the
handler); the in-app worker trains. A
``gr.Timer`` reads the jobs table every few seconds, so the progress is the same after a page reload or on a
second device. The Retrain button is disabled while a job is queued or running, and a second request
(another user, or the API) gets "a job is already running".
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from ..analysis.figures import training_curves_figure
from ..jobs.estimate import estimate_job, latest_pace
from ..jobs.params import parse_job_params
from ..store import JobBusy
from ..training.config import preset
from .bind import bind
from .errors import UserFacing, guarded
from .jobs_view import HISTORY_HEADERS, history_rows, job_card_html
from .studio import Studio

__all__ = ["build_train_tab", "cancel_training", "estimate_text", "start_training"]

_logger = logging.getLogger(__name__)


def start_training(studio: Studio, request: gr.Request | None, **overrides: Any) -> tuple[int, str]:
    """Queue a retrain for an admin; returns (job id, message).

    Raises:
        UserFacing: not an admin, or a job is already queued or running.
    """
    user = studio.require_admin(request, "start training")
    studio.sweep_lost_jobs(force=True)  # a job whose worker was killed must not block the retrain
    with studio.store() as store:
        try:
            job_id = studio.enqueue_training(store, user=user, **overrides)
        except JobBusy as exc:
            raise UserFacing(
                f"A training job is already running (job {exc.job_id}). Wait for it or cancel it."
            ) from None
    if studio.worker is None:
        return job_id, f"Job {job_id} queued. No worker runs inside this app: start `python -m ila_core worker`."
    return job_id, f"Job {job_id} queued; the worker starts it within seconds."


def cancel_training(studio: Studio, request: gr.Request | None) -> str:
    """Ask the live job to stop (admins only); returns a message."""
    studio.require_admin(request, "cancel training")
    with studio.store() as store:
        job = store.active_job()
        if job is None:
            raise UserFacing("No training job is running.")
        store.request_cancel(job["id"])
    return f"Cancel requested for job {job['id']}."


def _curve_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-epoch training rows, plus the final holdout evaluation as ``holdout_loss`` / ``holdout_acc`` points."""
    out = []
    for r in rows:
        v = r["values"]
        if v.get("phase") == "holdout":
            point = {
                "step": r["step"],
                "epoch": r["epoch"],
                "holdout_acc": v.get("top1"),
                "holdout_loss": v.get("loss"),
            }
            out.append({k: val for k, val in point.items() if val is not None})
        else:
            out.append({"step": r["step"], "epoch": r["epoch"], "train_loss": v.get("loss")})
    return out


def _recipe_defaults(studio: Studio) -> dict[str, Any]:
    return preset(studio.options.train_preset, **dict(studio.options.train_overrides)).to_dict()


def _overrides(defaults: dict[str, Any], ep: float | None, mins: float | None, rate: float | None, bs: float | None,
               sd: float | None) -> dict[str, Any]:  # fmt: skip
    """The options the user changed from the preset (empty fields keep it)."""
    given = {"epochs": int(ep) if ep else None, "minutes": float(mins) if mins else None,
             "lr": float(rate) if rate else None, "batch_size": int(bs) if bs else None,
             "seed": int(sd) if sd is not None else None}  # fmt: skip
    return {k: v for k, v in given.items() if v is not None and v != defaults.get(k)}


def estimate_text(studio: Studio, **overrides: Any) -> str:
    """The next retrain's estimated time on this machine (markdown), or why there is no estimate yet."""
    backbone, _, config = parse_job_params(studio.job_params(**overrides))
    with studio.store() as store:
        counts = store.label_counts_by_split()
        versions = store.model_versions()
    holdout = sum(n for (_, split), n in counts.items() if split == "holdout")
    train = sum(counts.values()) - holdout
    if train == 0:
        return "No estimate: label some training images first."
    pace = latest_pace(versions, backbone=backbone.name, image_size=config.image_size or backbone.image_size)
    if pace is None:
        return ("No time estimate yet: the first retrain on this backbone measures this machine's pace "
                f"({train:,} training and {holdout:,} holdout images now).")  # fmt: skip
    return estimate_job(train, holdout, config, pace).text()


@guarded
def poll(studio: Studio, state: dict[str, Any], request: gr.Request) -> list[Any]:
    """The newest job's card, the buttons for this user, curves and history (redrawn only when they changed)."""
    with studio.store() as store:
        jobs = store.jobs(limit=20)
        job = jobs[0] if jobs else None
        rows = store.job_metrics(job["id"]) if job else []
    live = job is not None and job["status"] in ("queued", "running")
    admin = studio.is_admin(request)
    signature = {"job": job and job["id"], "rows": len(rows), "status": job and job["status"]}
    changed = signature != state
    plot = gr.skip()
    if changed:  # redraw only when a metric row or the status changed; nothing to draw before the first epoch
        plot = training_curves_figure(_curve_rows(rows)) if rows else None
    return [job_card_html(job), gr.Button(interactive=admin and not live),
            gr.Button(interactive=admin and live), plot,
            history_rows(jobs) if changed else gr.skip(), signature]  # fmt: skip


@guarded
def on_retrain(studio: Studio, ep: float, mins: float | None, rate: float | None, bs: float, sd: float | None,
               request: gr.Request) -> str:  # fmt: skip
    """Queue a retrain with the options the user changed from the preset (admins)."""
    _, text = start_training(studio, request, **_overrides(_recipe_defaults(studio), ep, mins, rate, bs, sd))
    return text


@guarded
def on_estimate(studio: Studio, ep: float, mins: float | None, rate: float | None, bs: float,
                sd: float | None) -> str:  # fmt: skip
    """The next retrain's time with these options."""
    return estimate_text(studio, **_overrides(_recipe_defaults(studio), ep, mins, rate, bs, sd))


@guarded
def on_cancel(studio: Studio, request: gr.Request) -> str:
    """Ask the running job to stop (admins)."""
    return cancel_training(studio, request)


def build_train_tab(studio: Studio, demo: gr.Blocks) -> gr.Timer:
    """Lay out the Train tab inside the current ``gr.Tab``; returns its timer."""
    d = _recipe_defaults(studio)
    seen = gr.State({"job": None, "rows": -1, "status": None})
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=340):
            card = gr.HTML(job_card_html(None), elem_id="ila-job")
            with gr.Row():
                retrain = gr.Button("Retrain (quick preset)", variant="primary", elem_id="ila-retrain")
                cancel = gr.Button("Cancel job", variant="stop", elem_id="ila-cancel", interactive=False)
            message = gr.Markdown(elem_id="ila-train-message")
            estimate = gr.Markdown(elem_id="ila-estimate", elem_classes=["ila-muted"])
            with gr.Accordion("Training options", open=False):
                gr.Markdown("Adapters and head only; the backbone stays frozen. Empty fields keep the preset.",
                            elem_classes=["ila-muted"])  # fmt: skip
                epochs = gr.Slider(1, 50, value=d["epochs"], step=1, label="Epochs (upper bound)")
                minutes = gr.Number(value=d["minutes"], label="Time budget (minutes)", minimum=0.1, maximum=240)
                lr = gr.Number(value=d["lr"], label="Learning rate", minimum=1e-5, maximum=1.0)
                batch = gr.Slider(1, 64, value=d["batch_size"], step=1, label="Batch size")
                seed = gr.Number(value=d["seed"], label="Seed", precision=0, minimum=0)
        with gr.Column(scale=7, min_width=420):
            gr.Markdown("**Loss and accuracy** of the newest job (holdout values appear when it finishes)")
            curves = gr.Plot(show_label=False, elem_id="ila-curves")
            history = gr.Dataframe(headers=HISTORY_HEADERS, value=[], label="Job history", interactive=False,
                                   wrap=True, elem_id="ila-history", max_height=320,
                                   column_widths=["7%", "15%", "10%", "17%", "12%", "39%"])  # fmt: skip
    timer = gr.Timer(studio.options.poll_seconds)

    outputs = [card, retrain, cancel, curves, history, seen]
    options = [epochs, minutes, lr, batch, seed]
    private = {"api_visibility": "private"}
    show, estimated = bind(poll, studio), bind(on_estimate, studio)
    demo.load(show, [seen], outputs, **private, queue=False)
    demo.load(estimated, options, [estimate], **private, queue=False)
    for field in (epochs, minutes, batch):
        field.change(estimated, options, [estimate], **private, queue=False, show_progress="hidden")
    # The job list changed (a job moved on or ended, perhaps with a new pace): estimate again.
    history.change(estimated, options, [estimate], **private, queue=False, show_progress="hidden")
    retrain.click(bind(on_retrain, studio), options, [message], api_name="ui_retrain", **private, concurrency_limit=1,
                  concurrency_id="train").then(show, [seen], outputs, **private, queue=False)  # fmt: skip
    cancel.click(bind(on_cancel, studio), None, [message], api_name="ui_cancel", **private).then(
        show, [seen], outputs, **private, queue=False)  # fmt: skip
    timer.tick(show, [seen], outputs, api_name="ui_train_poll", **private, queue=False, show_progress="hidden")
    return timer
