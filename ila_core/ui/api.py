"""The documented HTTP API (``gradio_client``): predict, classify, label, import, export, train, promote, roll
back, read state.

These are ``gr.api`` endpoints with plain JSON arguments and typed answers (:mod:`ila_core.ui.api_types`, so
``view_api()`` shows every field), separate from the UI's own events (which are private and carry component
state). Every handler runs the same checks as the UI: a login when the app has users, admin role for
training, version changes and server-path imports, known cultivars for corrections. Files go through the
upload door (:mod:`ila_core.ui.uploads`): ``/predict`` and ``/import_files`` store what they accept,
``/classify`` and ``/classify_batch`` store nothing.
"""

# No ``from __future__ import annotations`` here: Gradio reads each endpoint's return type from
# ``inspect.signature(fn).return_annotation``, which stays a string under it and shows as ``Any``.

from pathlib import Path
from typing import Any

import gradio as gr
from gradio import FileData

from ..data.importers import ImportResult, summarise
from .api_types import (
    ClassifyAnswer,
    ImportAnswer,
    JobAnswer,
    LabelAnswer,
    LabelEvent,
    MessageAnswer,
    PredictAnswer,
    QueueAnswer,
    TrainAnswer,
    VersionAnswer,
    VersionSwitch,
)
from .bind import bind
from .data import EXPORTS, import_server_path, run_export
from .errors import UserFacing, guarded
from .import_jobs import ImportJob
from .labelling import record, undo
from .models import promote_version, rollback_version
from .queue import queue_answer, queue_page, resolve_version
from .scoring import predictions_for
from .studio import Studio
from .train import cancel_training, start_training
from .uploads import MAX_CLASSIFY_FILES, ReadUpload, file_paths, read_uploads, receive_uploads

__all__ = ["register_api"]

_JOB_FIELDS = ("id", "kind", "status", "user", "snapshot_event_id", "progress", "message", "result_version_id",
               "cancel_requested", "created_at", "started_at", "finished_at")  # fmt: skip


_REPORT_ROWS = 500
_SPLITS = {None: None, "": None, "train": "train", "holdout": "holdout"}


def _job_dict(job: dict[str, Any] | None) -> JobAnswer:
    return {} if job is None else {k: job.get(k) for k in _JOB_FIELDS}  # type: ignore[return-value]


def _split(value: str | None) -> str | None:
    if value not in _SPLITS:
        raise UserFacing(f"Unknown split {value!r}: 'train', 'holdout' or empty (keep the layout's).")
    return _SPLITS[value]


def _import_answer(
    status: str, message: str, results: list[ImportResult], created: tuple[str, ...] = (), job: ImportJob | None = None
) -> ImportAnswer:
    return {"status": status, "message": message, "job_id": job.id if job else None,
            "done": job.done if job else len(results), "total": job.total if job else len(results),
            "summary": summarise(results) if results or status == "done" else None,
            "results": [r.as_dict() for r in results[:_REPORT_ROWS]], "cultivars_created": list(created)}  # fmt: skip


def _job_import_answer(job: ImportJob | None) -> ImportAnswer:
    if job is None:
        return _import_answer("none", "No import has run since the app started.", [])
    if not job.finished:
        return _import_answer("running", f"Importing: {job.done} of {job.total or '?'} files done.", [], job=job)
    message = f"Finished: {len(job.results)} files." + (f" Stopped early: {job.error}" if job.error else "")
    return _import_answer("done", message, list(job.results), job=job)


def _classified(studio: Studio, read: list[ReadUpload]) -> list[ClassifyAnswer]:
    """Top-k of the served version for each decoded file; the stored twin (same bytes) named where there is one."""
    images = [r.image.image for r in read if r.image is not None]
    version, topks = studio.models.predict(images) if images else (studio.models.version_id, [])
    answers: list[ClassifyAnswer] = []
    ranked = iter(topks)
    with studio.store() as store:
        for r in read:
            if r.image is None:
                answers.append({"file": r.name, "status": "rejected", "reason": r.reason, "sha256": None,
                                "image_id": None, "label": None, "version_id": version, "top_k": []})  # fmt: skip
                continue
            twin = store.image_by_content(r.image.sha256)
            label = twin["label"] if twin is not None and twin.get("label_kind") == "label" else None
            answers.append({"file": r.name, "status": "ok", "reason": None, "sha256": r.image.sha256,
                            "image_id": None if twin is None else int(twin["id"]), "label": label,
                            "version_id": version,
                            "top_k": [{"label": n, "prob": round(p, 6)} for n, p in next(ranked)]})  # fmt: skip
    return answers


def _label_event(studio: Studio, request: gr.Request | None, image_id: int, client_event_id: str | None,
                 **event: Any) -> LabelAnswer:  # fmt: skip
    """Record one label event for the caller (``kind``, ``label``, ``source``), idempotent by client event id."""
    user = studio.username(request)
    with studio.store() as store:
        return record(store, int(image_id), user=user, client_event_id=client_event_id or None,
                      **event).as_dict()  # type: ignore[return-value]


# -- endpoints (bound to the studio by register_api) ------------------------------------------------


@guarded
def predict(studio: Studio, image: FileData, request: gr.Request) -> PredictAnswer:
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
def classify(studio: Studio, image: FileData, request: gr.Request) -> ClassifyAnswer:
    """The serving model's top-k for one leaf image; nothing is stored (the upload is removed once read)."""
    studio.username(request)
    read = read_uploads(studio, file_paths(image), max_files=1)
    if read[0].image is None:
        raise UserFacing(f"Image refused: {read[0].reason}")
    if studio.models.version_id is None:
        raise UserFacing(studio.models.unavailable())
    return _classified(studio, read)[0]


@guarded
def classify_batch(studio: Studio, images: list[FileData], request: gr.Request) -> list[ClassifyAnswer]:
    """Top-k for several leaf images in one call (at most 64); nothing is stored; a bad file is reported
    in its own entry ("rejected" with the reason) and the others are still answered."""
    studio.username(request)
    read = read_uploads(studio, file_paths(images), max_files=MAX_CLASSIFY_FILES)
    if studio.models.version_id is None:
        raise UserFacing(studio.models.unavailable())
    return _classified(studio, read)


@guarded
def correct(studio: Studio, image_id: int, label: str, client_event_id: str | None = None,
            request: gr.Request = None) -> LabelAnswer:  # fmt: skip
    """Give an image a cultivar label (one append-only event; resubmitting the same id stores nothing new)."""
    return _label_event(studio, request, image_id, client_event_id, kind="label", label=label)


@guarded
def confirm(studio: Studio, image_id: int, client_event_id: str | None = None,
            request: gr.Request = None) -> LabelAnswer:  # fmt: skip
    """Accept the serving model's top-1 as the image's label."""
    studio.username(request)  # the login first: a refusal runs no model
    with studio.store() as store:
        _, preds = predictions_for(store, studio.models, [store.image(int(image_id))])
    topk = preds.get(int(image_id))
    if not topk:
        raise UserFacing("No prediction for this image yet.")
    return _label_event(studio, request, image_id, client_event_id, kind="label", label=topk[0][0],
                        source="model-accepted")  # fmt: skip


@guarded
def unsure(studio: Studio, image_id: int, client_event_id: str | None = None,
           request: gr.Request = None) -> LabelAnswer:  # fmt: skip
    """Mark an image as unsure (kept out of training)."""
    return _label_event(studio, request, image_id, client_event_id, kind="unsure", label=None)


@guarded
def undo_label(studio: Studio, image_id: int, client_event_id: str | None = None,
               request: gr.Request = None) -> LabelAnswer:  # fmt: skip
    """Undo the image's last label event (recorded as a new event)."""
    user = studio.username(request)
    with studio.store() as store:
        return undo(store, int(image_id), user=user, client_event_id=client_event_id or None).as_dict()


@guarded
def history(studio: Studio, image_id: int, request: gr.Request = None) -> list[LabelEvent]:
    """Every label event of one image, oldest first."""
    studio.username(request)
    with studio.store() as store:
        return store.label_history(int(image_id))


@guarded
def cultivars(studio: Studio, request: gr.Request = None) -> list[str]:
    """Known cultivar names."""
    studio.username(request)
    with studio.store() as store:
        return store.cultivars()


@guarded
def train(studio: Studio, epochs: int | None = None, minutes: float | None = None,
          request: gr.Request = None) -> TrainAnswer:  # fmt: skip
    """Queue a retrain with the quick preset (admins only); answers "already running" when one is live."""
    job_id, message = start_training(studio, request, epochs=epochs, minutes=minutes)
    return {"job_id": job_id, "message": message}


@guarded
def cancel(studio: Studio, request: gr.Request = None) -> MessageAnswer:
    """Ask the running training job to stop (admins only)."""
    return {"message": cancel_training(studio, request)}


@guarded
def job(studio: Studio, job_id: int | None = None, request: gr.Request = None) -> JobAnswer:
    """A training job's state and progress (default: the newest job)."""
    studio.username(request)
    with studio.store() as store:
        if job_id is not None:
            return _job_dict(store.job(int(job_id)))
        jobs = store.jobs(limit=1)
        return _job_dict(jobs[0] if jobs else None)


@guarded
def queue(studio: Studio, sort: str = "margin", limit: int = 48, offset: int = 0, cultivar: str | None = None,
          split: str | None = None, version: str | None = None, request: gr.Request = None) -> QueueAnswer:
    """A page of a Review queue: sort unlabelled, margin, disagree, unsure, newest or unlike; total and scored."""
    studio.username(request)
    version_id = resolve_version(studio, version)
    page = queue_page(studio, sort=sort, cultivar=cultivar or None, split=split or None, version=version_id,
                      limit=int(limit), offset=int(offset))  # fmt: skip
    return queue_answer(page, version_id)


@guarded
def versions(studio: Studio, request: gr.Request = None) -> list[VersionAnswer]:
    """Model versions, newest first, with their holdout summary metrics."""
    studio.username(request)
    with studio.store() as store:
        rows = store.model_versions()
    keep = ("top1", "top5", "macro_f1", "loss", "count")
    return [{"id": v["id"], "status": v["status"], "parent_id": v["parent_id"], "job_id": v["job_id"],
             "created_at": v["created_at"], "serving": v["id"] == studio.models.version_id,
             "metrics": {k: (v["metrics"] or {}).get(k) for k in keep}} for v in rows]  # fmt: skip


@guarded
def promote(studio: Studio, version_id: int, request: gr.Request = None) -> VersionSwitch:
    """Validate and serve a version, then mark it active (admins only)."""
    return {"message": promote_version(studio, request, int(version_id)), "active": int(version_id)}


@guarded
def rollback(studio: Studio, version_id: int | None = None, request: gr.Request = None) -> VersionSwitch:
    """Go back to the previously active version, or to ``version_id`` (admins only)."""
    message = rollback_version(studio, request, version_id)
    return {"message": message, "active": studio.models.version_id}


@guarded
def import_files(studio: Studio, files: list[FileData], split: str | None = None,
                 request: gr.Request = None) -> ImportAnswer:  # fmt: skip
    """Store uploaded images or zips of images (one folder per cultivar inside a zip; only admins may create
    cultivars that way), as the Data tab's upload; ``split`` 'train' or 'holdout' for every new image."""
    studio.username(request)
    report = receive_uploads(studio, file_paths(files), request, split=_split(split))
    results = list(report.results)
    return _import_answer("done", report.describe(), results, report.cultivars_created)


@guarded
def import_path(studio: Studio, path: str, layout: str = "auto", split: str | None = None,
                request: gr.Request = None) -> ImportAnswer:  # fmt: skip
    """Import a folder, CSV, zip or Label Studio export under an import root (admins only); ``layout`` auto,
    imagefolder, csv, ufg, fiftyone, coco, hf-imagefolder or labelstudio. Big imports run in the background:
    follow them with /import_status."""
    done = import_server_path(studio, request, path, layout=layout, split=_split(split))
    if done.job is not None:
        return _import_answer("running", f"Import of {done.count:,} files started in the background.", [],
                              job=done.job)  # fmt: skip
    results = list(done.results)
    return _import_answer("done", f"Finished: {len(results)} files.", results)


@guarded
def import_status(studio: Studio, request: gr.Request = None) -> ImportAnswer:
    """The latest server-path import: running (with progress), done (with its results) or none."""
    studio.username(request)
    return _job_import_answer(studio.imports.current())


@guarded
def export_data(studio: Studio, fmt: str = "csv", image_url_prefix: str | None = None,
                request: gr.Request = None) -> FileData:  # fmt: skip
    """Download an export: csv (current labels), history (every label event), labelstudio (tasks JSON and
    label_config.xml, zipped; ``image_url_prefix`` before each image path) or imagefolder (zipped tree)."""
    studio.username(request)
    if fmt not in EXPORTS:
        raise UserFacing(f"Unknown export format {fmt!r}: one of {', '.join(EXPORTS)}.")
    path = run_export(studio, fmt, (image_url_prefix or "").strip() or None)
    return FileData(path=str(path), orig_name=Path(path).name)


def register_api(studio: Studio) -> None:
    """Add the API endpoints to the Blocks being built (call inside ``with gr.Blocks()``)."""
    gr.api(bind(predict, studio), api_name="predict", concurrency_id="model")
    gr.api(bind(classify, studio), api_name="classify", concurrency_id="model")
    gr.api(bind(classify_batch, studio), api_name="classify_batch", concurrency_id="model")
    for fn, name in ((import_files, "import_files"), (import_path, "import_path")):
        gr.api(bind(fn, studio), api_name=name, concurrency_id="import", concurrency_limit=1)
    gr.api(bind(import_status, studio), api_name="import_status", concurrency_id="reads", concurrency_limit=4)
    gr.api(bind(export_data, studio), api_name="export", concurrency_id="export", concurrency_limit=1)
    for fn, name in ((correct, "correct"), (confirm, "confirm"), (unsure, "unsure"), (undo_label, "undo")):
        gr.api(bind(fn, studio), api_name=name, concurrency_id="labels", concurrency_limit=4)
    for fn, name in ((history, "label_history"), (cultivars, "cultivars"), (job, "job"), (versions, "versions"),
                     (queue, "queue")):
        gr.api(bind(fn, studio), api_name=name, concurrency_id="reads", concurrency_limit=4)
    gr.api(bind(train, studio), api_name="train", concurrency_id="train", concurrency_limit=1)
    gr.api(bind(cancel, studio), api_name="cancel", concurrency_id="train", concurrency_limit=1)
    for fn, name in ((promote, "promote"), (rollback, "rollback")):
        gr.api(bind(fn, studio), api_name=name, concurrency_id="versions", concurrency_limit=1)
