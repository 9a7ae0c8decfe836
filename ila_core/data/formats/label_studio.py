"""Label Studio, both ways: export tasks (+ ``label_config.xml``) and import its JSON, JSON_MIN and CSV exports.

Export: a JSON list of tasks. ``data.image`` is ``image_url_prefix`` + the stored path relative to the data
directory (by default a Local Storage URL, ``/data/local-files/?d=images/ab/<sha256>.png``), ``data.sha256``
names the stored image; ``annotations`` hold the current hard label and ``predictions`` the newest stored
prediction (``model_version``, ``score``). Results use ``from_name="cultivar"``, ``to_name="image"``, the names
of the ``label_config.xml`` written beside the JSON (a single-choice ``Choices`` over every cultivar).

Import: every annotation becomes at most one label event. Its task is matched to a stored image by
``data.sha256`` or by the sha256 in the image file name (our export, Local Storage, uploads that kept the name).
An annotation whose cultivar differs from the image's current label is recorded as an ordinary correction
(source ``expert``, attributed to the annotator: the e-mail where the export has it, else
``labelstudio-user-<id>``), undoable like any other. Its client event id is the annotation id plus its
``updated_at``, so importing the same export twice (or its JSON and its CSV) stores nothing new, while an
annotation edited later in Label Studio is recorded again. Cancelled annotations, annotations that agree with
the current label, and annotations older than a label given in ILA Studio since are skipped, with the reason.
Reading a Label Studio export attributes events to other people, so it is an admin action (CLI, or the Data
tab's server path); uploads never reach it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlparse
from xml.sax.saxutils import quoteattr

from ...store import LabelStore, StoreError
from ...store.validation import check_label, check_user
from ..archive import write_atomic
from ..results import ImportResult
from ..tree import read_json

__all__ = ["LAYOUTS", "DEFAULT_PREFIX", "CHOICE_NAME", "sniff", "hint", "read_annotations", "import_annotations",
           "apply_annotation", "find_image", "annotator_name", "result_choices", "label_config", "export_tasks",
           "Annotation"]  # fmt: skip

_logger = logging.getLogger(__name__)

LAYOUTS = ("labelstudio-json", "labelstudio-json-min", "labelstudio-csv")
DEFAULT_PREFIX = "/data/local-files/?d="  # Local Storage, with LOCAL_FILES_DOCUMENT_ROOT = the data directory
CHOICE_NAME = "cultivar"
CONFIG_NAME = "label_config.xml"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PAGE = 5000


@dataclass(frozen=True)
class Annotation:
    """One annotation (or one task without any) read from a Label Studio export."""

    task_id: Any
    annotation_id: Any
    annotator: str | None
    choices: tuple[str, ...] | None  # None: no cultivar result at all
    data: dict[str, Any]
    updated_at: str | None = None
    cancelled: bool = False
    line: int | None = None


# -- reading ------------------------------------------------------------------------------------


def sniff(path: Path) -> str | None:
    """Which Label Studio export ``path`` is ('labelstudio-json', '-json-min', '-csv'), or None."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with path.open(encoding="utf-8-sig", errors="replace") as fh:
                header = {h.strip() for h in next(csv.reader([fh.readline()]), [])}
            return "labelstudio-csv" if {"annotation_id", "annotator"} <= header else None
        if suffix == ".json":
            obj = read_json(path)
            first = obj[0] if isinstance(obj, list) and obj and isinstance(obj[0], dict) else None
            if first is not None and isinstance(first.get("data"), dict):
                return "labelstudio-json"
            if first is not None and ("annotation_id" in first or "annotator" in first):
                return "labelstudio-json-min"
    except (OSError, ValueError):
        return None
    return None


def hint(path: Path) -> str:
    """A clause for refusal messages when an unread label file is a Label Studio export."""
    if sniff(path) is None:
        return ""
    return f" ({path.name} is a Label Studio export: import that file by itself, as an admin)"


def annotator_name(value: Any) -> str | None:
    """Who made an annotation: the e-mail where the export has it, else ``labelstudio-user-<id>``."""
    if isinstance(value, dict):
        value = value.get("email") or value.get("id")
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    if not text or text in ("{}", "None"):
        return None
    return f"labelstudio-user-{text}" if text.isdigit() else text


def result_choices(result: list[Any], name: str) -> tuple[str, ...] | None:
    """The choices of the ``Choices`` result named ``name`` (or of the only one); None when there is none."""
    picked = [r for r in result if isinstance(r, dict) and str(r.get("type", "")).lower() == "choices"]
    named = [r for r in picked if r.get("from_name") == name]
    if not named and len({r.get("from_name") for r in picked}) == 1:
        named = picked  # a config of the user's own with one Choices under another name
    if not named:
        return None
    return tuple(str(c) for c in (named[0].get("value") or {}).get("choices") or [])


def _value_choices(value: Any) -> tuple[str, ...] | None:
    """A JSON_MIN / CSV cell: a string for one choice, ``{"choices": [...]}`` (or JSON text of it) for several."""
    if isinstance(value, str) and value.strip()[:1] in ("{", "["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if isinstance(value, dict):
        value = value.get("choices")
    if value is None or value == "":
        return None
    if isinstance(value, list):
        return tuple(str(v.get("choices", v) if isinstance(v, dict) else v) for v in value)
    return (str(value),)


def _flat(row: dict[str, Any], line: int | None, name: str) -> Annotation:
    annotation_id = row.get("annotation_id")
    return Annotation(
        task_id=row.get("id"),
        annotation_id=None if annotation_id in (None, "") else annotation_id,
        annotator=annotator_name(row.get("annotator")),
        choices=_value_choices(row.get(name)),
        data=row,
        updated_at=row.get("updated_at") or row.get("created_at") or None,
        line=line,
    )


def read_annotations(path: Path, layout: str, *, choice_name: str = CHOICE_NAME) -> list[Annotation]:
    """Every annotation in a Label Studio export (a task without annotations gives one with no choices).

    Raises:
        ValueError: the file is not the export ``layout`` says.
    """
    if layout == "labelstudio-csv":
        with io.StringIO(path.read_text(encoding="utf-8-sig"), newline="") as fh:
            reader = csv.DictReader(fh)
            return [_flat(row, reader.line_num, choice_name) for row in reader]
    rows = read_json(path)
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path.name}: a Label Studio export is a JSON list of objects")
    if layout == "labelstudio-json-min":
        return [_flat(row, None, choice_name) for row in rows]
    out = []
    for task in rows:
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        annotations = task.get("annotations") or task.get("completions") or []
        if not annotations:
            out.append(Annotation(task.get("id"), None, None, None, data))
        for ann in annotations:
            if not isinstance(ann, dict):
                continue
            out.append(Annotation(
                task_id=task.get("id"), annotation_id=ann.get("id"), annotator=annotator_name(ann.get("completed_by")),
                choices=result_choices(ann.get("result") or [], choice_name), data=data,
                updated_at=ann.get("updated_at") or ann.get("created_at"),
                cancelled=bool(ann.get("was_cancelled") or ann.get("skipped")),
            ))  # fmt: skip
    return out


# -- importing ----------------------------------------------------------------------------------


def find_image(store: LabelStore, data: dict[str, Any]) -> dict[str, Any] | None:
    """The stored image a task names by ``data.sha256`` or by the sha256 in its image file name; else None."""
    sha = str(data.get("sha256") or "").lower()
    if _SHA256.fullmatch(sha) and (row := store.image_by_sha256(sha)) is not None:
        return row
    url = data.get("image")
    if not isinstance(url, str):
        return None
    parsed = urlparse(url)
    target = (parse_qs(parsed.query).get("d") or [parsed.path])[0]
    match = _SHA256.search(PurePosixPath(unquote(target)).name.lower())
    return store.image_by_sha256(match.group(0)) if match else None


def _when(text: Any) -> datetime | None:
    try:
        stamp = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def _client_id(a: Annotation, label: str) -> str:
    if a.annotation_id is not None:
        cid = f"labelstudio:{a.annotation_id}@{a.updated_at or ''}"
        if len(cid) <= 200:
            return cid
    key = json.dumps([a.task_id, a.annotation_id, a.annotator, a.updated_at, label], default=str)
    return f"labelstudio:{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def import_annotations(
    path: Path,
    layout: str,
    store: LabelStore,
    *,
    user: str | None = None,
    choice_name: str = CHOICE_NAME,
    new_cultivars: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> Iterator[ImportResult]:
    """Record the corrections of a Label Studio export (see the module docstring); one result per annotation.

    Args:
        path: the export file.
        layout: one of :data:`LAYOUTS` (from :func:`sniff`).
        store: an open store (this thread's).
        user: who is importing; recorded for annotations that name no annotator.
        choice_name: the ``Choices`` name that holds the cultivar.
        new_cultivars: False refuses annotations that name a cultivar the store does not know.
        on_progress: called with (done, total) after each annotation.
    """
    annotations = read_annotations(path, layout, choice_name=choice_name)
    # Oldest first, so that when several annotators answered one task the latest answer ends up current.
    ordered = sorted(enumerate(annotations), key=lambda p: (str(p[1].updated_at or ""), p[0]))
    for done, (_, a) in enumerate(ordered, start=1):
        yield apply_annotation(store, a, layout, user, new_cultivars)
        if on_progress is not None:
            on_progress(done, len(ordered))


def apply_annotation(
    store: LabelStore, a: Annotation, layout: str, user: str | None, new_cultivars: bool
) -> ImportResult:
    """Record one annotation as at most one correction event (the rules of the module docstring)."""
    name = f"task {a.task_id}" + (f" annotation {a.annotation_id}" if a.annotation_id is not None else "")

    def result(status: str, reason: str | None, row: dict[str, Any] | None = None, label: str | None = None
               ) -> ImportResult:  # fmt: skip
        return ImportResult(name, status, reason, row and row["id"], label, row and row["split"], a.line, layout,
                            "label" if label else None)  # fmt: skip

    row = find_image(store, a.data)
    if row is None:
        return result("rejected", "no stored image matches this task (data.sha256 or the image file name)")
    if a.cancelled:
        return result("skipped", "annotation cancelled in Label Studio", row)
    if not a.choices:
        return result("skipped", "no annotation" if a.annotation_id is None else "no cultivar chosen", row)
    if len(a.choices) > 1:
        return result("rejected", f"{len(a.choices)} cultivars chosen; a cultivar label is one per image", row)
    try:
        label = check_label(a.choices[0])
    except ValueError as exc:
        return result("rejected", f"bad label: {exc}", row)
    cid = _client_id(a, label)
    stored = store.label_event(cid)
    if stored is not None:
        return result("duplicate", f"annotation already imported (event {stored['id']})", row, label)
    current = store.current_label(row["id"])
    if current is not None and current["kind"] == "label" and current["label"] == label:
        return result("skipped", "already the current label", row, label)
    ours, theirs = _when(current and current["created_at"]), _when(a.updated_at)
    if ours is not None and theirs is not None and ours > theirs:
        return result("skipped", "labelled in ILA Studio after this annotation; not applied", row, label)
    try:
        annotator = check_user(a.annotator) if a.annotator else user
    except ValueError:
        annotator = user
    note = f"Label Studio annotation {a.annotation_id} on task {a.task_id}"
    try:
        done = store.record_label(row["id"], label, client_event_id=cid, user=annotator, source="expert", note=note,
                                  allow_new_cultivar=new_cultivars)  # fmt: skip
    except (StoreError, ValueError) as exc:
        return result("rejected", f"label not saved: {exc}", row, label)
    was = "unlabelled" if done.previous is None else repr(done.previous)
    return result("imported", f"correction by {annotator or 'unknown'} (was {was})", row, label)


# -- exporting ----------------------------------------------------------------------------------


def label_config(cultivars: list[str]) -> str:
    """Label Studio labelling config: the image and one required single choice over ``cultivars``."""
    choices = "".join(f"    <Choice value={quoteattr(name)}/>\n" for name in cultivars)
    return (
        "<View>\n"
        '  <Image name="image" value="$image" zoom="true"/>\n'
        f'  <Choices name="{CHOICE_NAME}" toName="image" choice="single-radio" showInline="false" required="true">\n'
        f"{choices}"
        "  </Choices>\n"
        "</View>\n"
    )


def _choice(label: str) -> dict[str, Any]:
    return {"from_name": CHOICE_NAME, "to_name": "image", "type": "choices", "value": {"choices": [label]}}


def export_tasks(store: LabelStore, out: Path, image_url_prefix: str = DEFAULT_PREFIX) -> dict[str, Any]:
    """Write the tasks JSON to ``out`` and ``label_config.xml`` beside it (both atomically); returns counts."""
    tasks, annotated, predicted, offset = [], 0, 0, 0
    while page := store.images(limit=_PAGE, offset=offset):
        offset += len(page)
        for image in page:
            task: dict[str, Any] = {
                "id": image["id"],
                "data": {
                    "image": image_url_prefix + quote(image["rel_path"]),
                    "sha256": image["sha256"],
                    "split": image["split"],
                    "original_name": image["original_name"],
                },
                "annotations": [],
                "predictions": [],
            }
            if image["label_kind"] == "label":
                task["annotations"].append({"result": [_choice(image["label"])], "was_cancelled": False})
                annotated += 1
            prediction = store.latest_prediction(image["id"])
            if prediction and prediction["topk"]:
                best = prediction["topk"][0]
                task["predictions"].append({
                    "model_version": f"v{prediction['model_version_id']}",
                    "score": float(best["prob"]),
                    "result": [_choice(best["label"])],
                })  # fmt: skip
                predicted += 1
            tasks.append(task)
    config = out.parent / CONFIG_NAME
    write_atomic(out, json.dumps(tasks, ensure_ascii=False, indent=1).encode("utf-8"))
    write_atomic(config, label_config(store.cultivars()).encode("utf-8"))
    return {"tasks": len(tasks), "annotations": annotated, "predictions": predicted, "label_config": str(config)}
