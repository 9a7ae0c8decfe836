"""The JSON shapes of Label Studio's ML backend protocol, apart from any HTTP server.

Label Studio calls an ML backend at four routes (``label-studio-ml-backend``'s ``api.py`` and Label Studio's
``ml`` app): ``GET /health`` answers ``{"status": "UP"}``; ``POST /setup`` receives the project's labelling
config (``schema``) and answers ``{"model_version": ...}``; ``POST /predict`` receives ``{"tasks": [...],
"label_config": ..., "project": ...}`` and answers ``{"results": [...]}``, one entry per task in order, each a
list of predictions ``{"model_version", "score", "result": [...]}`` (an empty list: no prediction for that task);
``POST /webhook`` receives Label Studio's webhook events (``{"action": "ANNOTATION_CREATED", "annotation":
{...}, "task": {...}, "project": {...}}``).

This module reads the requests and builds the answers; :mod:`ila_core.ui.ml_backend` serves them. Tasks are
matched to stored images the way the export importer matches them (``data.sha256``, or the sha256 in the image
file name), so the backend predicts on images ILA Studio already holds and never fetches a URL.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from .label_studio import CHOICE_NAME, Annotation, annotator_name, result_choices

__all__ = ["ANNOTATION_EVENTS", "DELETE_EVENTS", "TRAIN_EVENT", "ControlNames", "ProtocolError", "control_names",
           "model_version", "predict_tasks", "task_prediction", "webhook_annotation"]  # fmt: skip

ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
DELETE_EVENTS = ("ANNOTATION_DELETED", "ANNOTATIONS_DELETED")
TRAIN_EVENT = "START_TRAINING"
_MAX_CONFIG_CHARS = 1_000_000


class ProtocolError(ValueError):
    """A request that does not follow the protocol; the message names what is wrong."""


@dataclass(frozen=True)
class ControlNames:
    """The ``Choices`` control that holds the cultivar and the ``Image`` it labels."""

    from_name: str = CHOICE_NAME
    to_name: str = "image"


def control_names(label_config: Any, *, required: bool = False) -> ControlNames:
    """The cultivar ``Choices`` of a labelling config: the one named ``cultivar``, else the only one.

    Args:
        label_config: the config's XML text (``None`` or empty: ILA Studio's own names).
        required: raise when the config has no usable ``Choices`` (``/setup``) instead of the defaults.

    Raises:
        ProtocolError: the config is not XML, or (``required``) names no single ``Choices`` over an image.
    """
    if not label_config:
        if required:
            raise ProtocolError("the setup request carries no labelling config ('schema')")
        return ControlNames()
    if not isinstance(label_config, str) or len(label_config) > _MAX_CONFIG_CHARS:
        raise ProtocolError("the labelling config must be XML text of at most 1,000,000 characters")
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError as exc:
        raise ProtocolError(f"the labelling config is not valid XML ({exc})") from None
    images = {el.get("name") for el in root.iter("Image") if el.get("name")}
    choices = [el for el in root.iter("Choices") if el.get("name") and el.get("toName") in images]
    named = [el for el in choices if el.get("name") == CHOICE_NAME] or choices
    if len(named) != 1:
        if not required:
            return ControlNames()
        found = "no <Choices> over an <Image>" if not named else f"{len(named)} <Choices> over images"
        raise ProtocolError(
            f"the labelling config has {found}; ILA Studio predicts one cultivar per image: use the "
            "label_config.xml of its Label Studio export, or name the cultivar <Choices> 'cultivar'"
        )
    return ControlNames(str(named[0].get("name")), str(named[0].get("toName")))


def model_version(version_id: int | None) -> str | None:
    """The model version string Label Studio shows (``v<id>``, as in the export), or None."""
    return None if version_id is None else f"v{version_id}"


def task_prediction(topk: list[tuple[str, float]], version_id: int, names: ControlNames) -> dict[str, Any]:
    """One prediction of a task: the top-1 cultivar as a single choice, scored with its probability."""
    label, prob = topk[0]
    score = round(float(prob), 6)
    return {
        "model_version": model_version(version_id),
        "score": score,
        "result": [{"from_name": names.from_name, "to_name": names.to_name, "type": "choices",
                    "value": {"choices": [label]}, "score": score}],  # fmt: skip
    }


def predict_tasks(body: Any) -> list[dict[str, Any]]:
    """The tasks of a ``/predict`` request body.

    Raises:
        ProtocolError: no ``tasks`` list of objects.
    """
    tasks = body.get("tasks") if isinstance(body, dict) else None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise ProtocolError("a predict request is a JSON object whose 'tasks' is a list of task objects")
    return tasks


def webhook_annotation(payload: dict[str, Any], names: ControlNames) -> Annotation:
    """The annotation an ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED`` event carries.

    Raises:
        ProtocolError: the event has no ``annotation`` object or no ``task`` with ``data``.
    """
    annotation, task = payload.get("annotation"), payload.get("task")
    if not isinstance(annotation, dict):
        raise ProtocolError(f"a {payload.get('action')} event carries an 'annotation' object; this one has none")
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise ProtocolError(f"a {payload.get('action')} event carries its 'task' with 'data'; this one has none")
    return Annotation(
        task_id=task.get("id", annotation.get("task")),
        annotation_id=annotation.get("id"),
        annotator=annotator_name(annotation.get("completed_by")),
        choices=result_choices(annotation.get("result") or [], names.from_name),
        data=task["data"],
        updated_at=annotation.get("updated_at") or annotation.get("created_at"),
        cancelled=bool(annotation.get("was_cancelled")),
    )
