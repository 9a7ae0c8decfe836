"""The documented HTTP API (``gradio_client``): predict, label, train, promote, roll back, read state.

These are ``gr.api`` endpoints with plain JSON arguments and answers, separate from the UI's own events
(which are private and carry component state). Every handler runs the same checks as the UI: a login when
the app has users, admin role for training and version changes, known cultivars for corrections.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from gradio import FileData

from .errors import UserFacing, guarded
from .labelling import record, undo
from .models import promote_version, rollback_version
from .queue import queue_answer, queue_page, resolve_version
from .scoring import predictions_for
from .studio import Studio
from .train import cancel_training, start_training
from .uploads import file_paths, receive_uploads

__all__ = ["register_api"]

_JOB_FIELDS = ("id", "kind", "status", "user", "snapshot_event_id", "progress", "message", "result_version_id",
               "cancel_requested", "created_at", "started_at", "finished_at")  # fmt: skip


def _job_dict(job: dict[str, Any] | None) -> dict[str, Any]:
    return {} if job is None else {k: job.get(k) for k in _JOB_FIELDS}


def register_api(studio: Studio) -> None:
    """Add the API endpoints to the Blocks being built (call inside ``with gr.Blocks()``)."""

    @guarded
    def predict(image: FileData, request: gr.Request) -> dict[str, Any]:
        """Store one leaf image (deduplicated by content) and return the serving model's top-k for it."""
        def require_model() -> None:  # say so before storing anything
            if studio.models.version_id is None:
                raise UserFacing(studio.models.unavailable())

        report = receive_uploads(studio, file_paths(image), request, allow_zip=False, before_store=require_model)
        result = report.results[0]
        if result.status == "rejected":
            raise UserFacing(f"Image refused: {result.reason}. Nothing was stored.")
        with studio.store() as store:
            row = store.image(result.image_id)
            version, preds = predictions_for(store, studio.models, [row])
        if version is None:
            raise UserFacing(studio.models.unavailable())
        topk = preds.get(int(row["id"]), [])
        return {"image_id": int(row["id"]), "duplicate": result.status == "duplicate", "version_id": version,
                "label": row.get("label"), "top_k": [{"label": n, "prob": round(p, 6)} for n, p in topk]}  # fmt: skip

    @guarded
    def correct(
        image_id: int, label: str, client_event_id: str | None = None, request: gr.Request = None
    ) -> dict[str, Any]:
        """Give an image a cultivar label (one append-only event; resubmitting the same id stores nothing new)."""
        user = studio.username(request)
        with studio.store() as store:
            return record(store, int(image_id), kind="label", label=label, user=user,
                          client_event_id=client_event_id or None).as_dict()  # fmt: skip

    @guarded
    def confirm(image_id: int, client_event_id: str | None = None, request: gr.Request = None) -> dict[str, Any]:
        """Accept the serving model's top-1 as the image's label."""
        user = studio.username(request)
        with studio.store() as store:
            _, preds = predictions_for(store, studio.models, [store.image(int(image_id))])
            topk = preds.get(int(image_id))
            if not topk:
                raise UserFacing("No prediction for this image yet.")
            return record(store, int(image_id), kind="label", label=topk[0][0], user=user, source="model-accepted",
                          client_event_id=client_event_id or None).as_dict()  # fmt: skip

    @guarded
    def unsure(image_id: int, client_event_id: str | None = None, request: gr.Request = None) -> dict[str, Any]:
        """Mark an image as unsure (kept out of training)."""
        user = studio.username(request)
        with studio.store() as store:
            return record(store, int(image_id), kind="unsure", label=None, user=user,
                          client_event_id=client_event_id or None).as_dict()  # fmt: skip

    @guarded
    def undo_label(image_id: int, client_event_id: str | None = None, request: gr.Request = None) -> dict[str, Any]:
        """Undo the image's last label event (recorded as a new event)."""
        user = studio.username(request)
        with studio.store() as store:
            return undo(store, int(image_id), user=user, client_event_id=client_event_id or None).as_dict()

    @guarded
    def history(image_id: int, request: gr.Request = None) -> list[dict[str, Any]]:
        """Every label event of one image, oldest first."""
        studio.username(request)
        with studio.store() as store:
            return store.label_history(int(image_id))

    @guarded
    def cultivars(request: gr.Request = None) -> list[str]:
        """Known cultivar names."""
        studio.username(request)
        with studio.store() as store:
            return store.cultivars()

    @guarded
    def train(epochs: int | None = None, minutes: float | None = None, request: gr.Request = None) -> dict[str, Any]:
        """Queue a retrain with the quick preset (admins only); answers "already running" when one is live."""
        job_id, message = start_training(studio, request, epochs=epochs, minutes=minutes)
        return {"job_id": job_id, "message": message}

    @guarded
    def cancel(request: gr.Request = None) -> dict[str, Any]:
        """Ask the running training job to stop (admins only)."""
        return {"message": cancel_training(studio, request)}

    @guarded
    def job(job_id: int | None = None, request: gr.Request = None) -> dict[str, Any]:
        """A training job's state and progress (default: the newest job)."""
        studio.username(request)
        with studio.store() as store:
            if job_id is not None:
                return _job_dict(store.job(int(job_id)))
            jobs = store.jobs(limit=1)
            return _job_dict(jobs[0] if jobs else None)

    @guarded
    def queue(sort: str = "margin", limit: int = 48, offset: int = 0, cultivar: str | None = None,
              split: str | None = None, version: str | None = None, request: gr.Request = None) -> dict[str, Any]:
        """A page of a Review queue: sort unlabelled, margin, disagree, unsure, newest or unlike; total and scored."""
        studio.username(request)
        version_id = resolve_version(studio, version)
        page = queue_page(studio, sort=sort, cultivar=cultivar or None, split=split or None, version=version_id,
                          limit=int(limit), offset=int(offset))  # fmt: skip
        return queue_answer(page, version_id)

    @guarded
    def versions(request: gr.Request = None) -> list[dict[str, Any]]:
        """Model versions, newest first, with their holdout summary metrics."""
        studio.username(request)
        with studio.store() as store:
            rows = store.model_versions()
        keep = ("top1", "top5", "macro_f1", "loss", "count")
        return [{"id": v["id"], "status": v["status"], "parent_id": v["parent_id"], "job_id": v["job_id"],
                 "created_at": v["created_at"], "serving": v["id"] == studio.models.version_id,
                 "metrics": {k: (v["metrics"] or {}).get(k) for k in keep}} for v in rows]  # fmt: skip

    @guarded
    def promote(version_id: int, request: gr.Request = None) -> dict[str, Any]:
        """Validate and serve a version, then mark it active (admins only)."""
        return {"message": promote_version(studio, request, int(version_id)), "active": int(version_id)}

    @guarded
    def rollback(version_id: int | None = None, request: gr.Request = None) -> dict[str, Any]:
        """Go back to the previously active version, or to ``version_id`` (admins only)."""
        message = rollback_version(studio, request, version_id)
        return {"message": message, "active": studio.models.version_id}

    gr.api(predict, api_name="predict", concurrency_id="model")
    for fn, name in ((correct, "correct"), (confirm, "confirm"), (unsure, "unsure"), (undo_label, "undo")):
        gr.api(fn, api_name=name, concurrency_id="labels", concurrency_limit=4)
    for fn, name in ((history, "label_history"), (cultivars, "cultivars"), (job, "job"), (versions, "versions"),
                     (queue, "queue")):
        gr.api(fn, api_name=name, concurrency_id="reads", concurrency_limit=4)
    gr.api(train, api_name="train", concurrency_id="train", concurrency_limit=1)
    gr.api(cancel, api_name="cancel", concurrency_id="train", concurrency_limit=1)
    for fn, name in ((promote, "promote"), (rollback, "rollback")):
        gr.api(fn, api_name=name, concurrency_id="versions", concurrency_limit=1)
