"""The shapes of the HTTP API's answers, as typed dicts, so ``view_api()`` and the API page show every field.

Gradio turns a handler's return annotation into the endpoint's JSON schema; ``dict[str, Any]`` shows as
``Any``. Each endpoint of :mod:`ila_core.ui.api` returns one of these.
"""

from __future__ import annotations

from typing import TypedDict

__all__ = ["ClassifyAnswer", "CultivarProb", "ImportAnswer", "ImportRow", "ImportSummary",
           "JobAnswer", "LabelAnswer", "LabelEvent", "MessageAnswer", "PredictAnswer", "QueueAnswer", "QueueRow",
           "TrainAnswer", "VersionAnswer", "VersionMetrics", "VersionSwitch"]  # fmt: skip


class CultivarProb(TypedDict):
    """One entry of a top-k: a cultivar and its probability."""

    label: str
    prob: float


class PredictAnswer(TypedDict):
    """``/predict``: the stored image and the served version's top-k for it."""

    image_id: int
    duplicate: bool  # the same bytes were already stored
    version_id: int
    label: str | None  # the image's current cultivar label, if it has one
    top_k: list[CultivarProb]


class ClassifyAnswer(TypedDict):
    """``/classify`` and ``/classify_batch``: one file's top-k; nothing is stored."""

    file: str  # the name the file was sent with
    status: str  # "ok" or "rejected"
    reason: str | None  # why a file was rejected (not an image, too large, ...)
    sha256: str | None  # of the file's bytes
    image_id: int | None  # the stored image with these bytes, if the store already holds it
    label: str | None  # that image's current cultivar label
    version_id: int | None
    top_k: list[CultivarProb]


class LabelAnswer(TypedDict):
    """``/correct``, ``/confirm``, ``/unsure``, ``/undo``: what the label action did."""

    image_id: int
    event_id: int
    created: bool  # False: this client_event_id was already stored (nothing new)
    previous: str | None
    current: str | None
    conflict: bool  # the label had changed since the caller looked at it
    message: str


class LabelEvent(TypedDict):
    """``/label_history``: one append-only label event."""

    id: int
    client_event_id: str
    image_id: int
    kind: str  # label, unsure, between or undo
    label: str | None
    alt_label: str | None
    replaces_event_id: int | None
    restores_event_id: int | None
    user: str | None
    source: str  # expert, import, model-accepted or bulk
    note: str | None
    created_at: str


class TrainAnswer(TypedDict):
    """``/train``: the queued job."""

    job_id: int
    message: str


class MessageAnswer(TypedDict):
    """``/cancel``: what was done."""

    message: str


class JobAnswer(TypedDict, total=False):
    """``/job``: a training job (every field absent when there is no job yet)."""

    id: int
    kind: str
    status: str  # queued, running, succeeded, failed or cancelled
    user: str | None
    snapshot_event_id: int | None
    progress: float | None
    message: str | None
    result_version_id: int | None
    cancel_requested: bool | int | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None


class QueueRow(TypedDict):
    """One image of a ``/queue`` page."""

    image_id: int
    sha256: str
    split: str | None
    label: str | None
    label_kind: str | None
    top1: str | None
    top1_prob: float | None
    margin: float | None
    nearest_similarity: float | None


class QueueAnswer(TypedDict):
    """``/queue``: a page, how many images match, how many of them the version has scored."""

    items: list[QueueRow]
    total: int
    scored: int
    version_id: int | None


class VersionMetrics(TypedDict):
    """Holdout summary metrics of a model version (None where not measured)."""

    top1: float | None
    top5: float | None
    macro_f1: float | None
    loss: float | None
    count: int | None


class VersionAnswer(TypedDict):
    """``/versions``: one model version."""

    id: int
    status: str
    parent_id: int | None
    job_id: int | None
    created_at: str
    serving: bool
    metrics: VersionMetrics


class VersionSwitch(TypedDict):
    """``/promote``, ``/rollback``: what happened and which version is active now."""

    message: str
    active: int | None


class ImportRow(TypedDict):
    """One file or annotation of an import."""

    file: str
    status: str  # imported, duplicate, skipped or rejected
    reason: str | None
    image_id: int | None
    label: str | None
    split: str | None
    line: int | None  # the line of a CSV or Label Studio CSV row
    layout: str | None
    kind: str | None


class ImportSummary(TypedDict):
    """Counts of an import, the layout read and the most common reasons."""

    total: int
    imported: int
    duplicate: int
    skipped: int
    rejected: int
    labelled: int
    unsure_or_between: int
    layout: str | None
    reasons: dict[str, int]


class ImportAnswer(TypedDict):
    """``/import_files``, ``/import_path``, ``/import_status``: an import done, running or none."""

    status: str  # done, running or none
    message: str
    job_id: int | None  # a background import (``/import_status`` follows it)
    done: int
    total: int | None
    summary: ImportSummary | None
    results: list[ImportRow]  # the first 500
    cultivars_created: list[str]

