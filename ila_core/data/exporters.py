"""Export the label store: ImageFolder tree, current-label CSV, label-history CSV, Label Studio JSON.

* ``imagefolder``: ``out/<split>/<cultivar>/<sha256>.<ext>`` for every image with a current hard label, in the
  split folders ``train/``, ``test/`` (our holdout: the split keyword ``datasets`` and torchvision users expect;
  the importer maps it back) and ``unassigned/``, plus a ``README.md`` whose ``configs`` name all three so that
  ``datasets.load_dataset(out)`` loads every split. Built in a temporary folder and renamed into place, so
  ``out`` appears complete or not at all. Cultivar names are percent-escaped where a file system would choke
  (``/ \\ : * ? " < > | %``, a leading dot, a trailing dot or space); the importer decodes them again.
* ``csv``: one row per image, header ``path,label,split,...`` so it can be imported again. ``label`` holds
  only hard labels; ``unsure``/``between`` states are in ``label_kind``, ``tentative_label``, ``alt_label``.
  ``path`` is never absolute and never climbs with ``..`` (no server paths leak into a download): it is
  relative to the CSV's own folder when the data directory lies inside that folder (the CSV imports again
  where it was written), else relative to the data directory (``images/ab/<sha256>.png``: a zip or folder of
  the CSV next to the data directory's ``images/`` imports again).
* ``history``: every label event in commit order (the append-only log, undo events included).
* ``labelstudio``: a JSON list of tasks and ``label_config.xml`` beside it
  (:mod:`ila_core.data.formats.label_studio`).

CSV cells that a spreadsheet would run as a formula (starting with ``= + - @``, tab or CR) get a leading
apostrophe; the CSV importer strips it again.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from ..store import DB_NAME, LabelStore
from .archive import write_atomic
from .formats import hf_imagefolder, label_studio

__all__ = ["export", "EXPORT_FORMATS", "neutralise_cell", "folder_name", "LABEL_STUDIO_PREFIX"]

_logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("imagefolder", "csv", "history", "labelstudio")
LABEL_STUDIO_PREFIX = label_studio.DEFAULT_PREFIX
# Store split -> folder of the ImageFolder export.
SPLIT_FOLDER_NAMES = {"train": "train", "holdout": "test", None: "unassigned"}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_UNSAFE_IN_NAMES = set('/\\:*?"<>|%')
_PAGE = 5000

CSV_COLUMNS = (
    "path", "label", "split", "image_id", "sha256", "label_kind", "tentative_label", "alt_label", "labelled_by",
    "labelled_at", "original_name", "width", "height", "format",
)
HISTORY_COLUMNS = (
    "event_id", "client_event_id", "image_id", "sha256", "kind", "label", "alt_label", "replaces_event_id",
    "restores_event_id", "user", "source", "note", "created_at",
)


def export(
    data_dir: Path, out: Path, *, fmt: str, image_url_prefix: str = LABEL_STUDIO_PREFIX
) -> dict[str, Any]:
    """Write one export of the store in ``data_dir`` to ``out``.

    Args:
        data_dir: the app's data directory (holds ``ila.db`` and ``images/``).
        out: a folder for 'imagefolder' (must be missing or empty), else a file (replaced atomically).
        fmt: 'imagefolder', 'csv', 'history' or 'labelstudio'.
        image_url_prefix: Label Studio only: prepended to each image's path relative to ``data_dir`` (the
            default suits Local Storage with ``LOCAL_FILES_DOCUMENT_ROOT`` = ``data_dir``; a web server that
            serves ``data_dir`` gives e.g. ``http://host:8081/``).

    Returns:
        A summary: format, output path and counts.

    Raises:
        ValueError: unknown ``fmt``, or a non-empty ``out`` folder for 'imagefolder'.
        FileNotFoundError: no store in ``data_dir``.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (expected one of {', '.join(EXPORT_FORMATS)})")
    data_dir, out = Path(data_dir), Path(out)
    db_path = data_dir / DB_NAME
    if not db_path.is_file():
        raise FileNotFoundError(f"no label store at {db_path}")
    with LabelStore.open(db_path) as store:
        if fmt == "imagefolder":
            counts = _export_imagefolder(store, data_dir, out)
        elif fmt == "csv":
            counts = _export_csv(store, data_dir, out)
        elif fmt == "history":
            counts = _export_history(store, out)
        else:
            counts = label_studio.export_tasks(store, out, image_url_prefix)
    _logger.info("exported %s to %s: %s", fmt, out, counts)
    return {"format": fmt, "out": str(out), **counts}


def neutralise_cell(value: Any) -> str:
    """A CSV cell that spreadsheets show as text: ``=1+1`` becomes ``'=1+1``; None becomes ``""``."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def folder_name(label: str) -> str:
    """A cultivar name as one safe folder name; ``urllib.parse.unquote`` gives the name back."""
    chars = [f"%{ord(c):02X}" if c in _UNSAFE_IN_NAMES or ord(c) < 32 else c for c in label]
    if chars and chars[0] == ".":
        chars[0] = "%2E"  # no hidden folders, no '.' or '..'
    if chars and chars[-1] in (".", " "):
        chars[-1] = f"%{ord(chars[-1]):02X}"  # Windows strips these
    return "".join(chars)


def _all_images(store: LabelStore) -> Iterator[dict[str, Any]]:
    offset = 0
    while page := store.images(limit=_PAGE, offset=offset):
        yield from page
        offset += len(page)


def _stored_rel(rel_path: str) -> PurePosixPath:
    # Checked by name, not resolved: images/ may be a symlink to another volume, and that is still "inside".
    rel = PurePosixPath(rel_path.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"stored path {rel_path!r} leaves the data directory")
    return rel


def _stored_file(data_dir: Path, rel_path: str) -> Path:
    return data_dir / _stored_rel(rel_path)


def _export_imagefolder(store: LabelStore, data_dir: Path, out: Path) -> dict[str, Any]:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.{uuid.uuid4().hex}.partial"
    partial.mkdir()
    copied, missing, per_split = 0, 0, Counter()
    try:
        for item in store.labelled_items():
            source = _stored_file(data_dir, item.rel_path)
            if not source.is_file():
                _logger.warning("export: stored file for image %d is missing: %s", item.image_id, item.rel_path)
                missing += 1
                continue
            split = item.split or "unassigned"
            target = partial / SPLIT_FOLDER_NAMES[item.split] / folder_name(item.label) / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            copied += 1
            per_split[split] += 1
        folders = [f for f in SPLIT_FOLDER_NAMES.values() if (partial / f).is_dir()]
        write_atomic(partial / "README.md", hf_imagefolder.dataset_card(folders).encode("utf-8"))
        if out.exists():
            out.rmdir()  # empty (checked above); os.replace cannot swap onto it everywhere
        os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return {"images": copied, "missing": missing, "splits": dict(per_split)}


def _write_csv(out: Path, columns: tuple[str, ...], rows: list[list[Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    writer.writerows([neutralise_cell(cell) for cell in row] for row in rows)
    write_atomic(out, buf.getvalue().encode("utf-8"))


def _csv_path_prefix(data_dir: Path, out: Path) -> tuple[PurePosixPath, str]:
    """What goes before a stored image path in the CSV: the data directory's place below the CSV's folder if
    it is inside it, else nothing (relative to the data directory). Never ``..``: that would leak the server's
    layout and is refused inside a zip."""
    data, folder = Path(os.path.abspath(data_dir)), Path(os.path.abspath(out.parent))
    if data.is_relative_to(folder):
        return PurePosixPath(data.relative_to(folder).as_posix()), "export"
    return PurePosixPath(), "data_dir"


def _export_csv(store: LabelStore, data_dir: Path, out: Path) -> dict[str, Any]:
    prefix, relative_to = _csv_path_prefix(data_dir, out)
    rows, labelled = [], 0
    for image in _all_images(store):
        current = store.current_label(image["id"]) if image["label_kind"] else None
        kind = current["kind"] if current else None
        hard = current["label"] if kind == "label" else None
        labelled += hard is not None
        path = (prefix / _stored_rel(image["rel_path"])).as_posix()
        if path.startswith(_FORMULA_START):
            path = "./" + path  # a folder named like "-data": the importer takes paths verbatim, no apostrophe
        rows.append([
            path, hard, image["split"], image["id"], image["sha256"], kind,
            current["label"] if current and kind != "label" else None, current and current["alt_label"],
            current and current["user"], current and current["created_at"], image["original_name"],
            image["width"], image["height"], image["format"],
        ])
    _write_csv(out, CSV_COLUMNS, rows)
    return {"images": len(rows), "labelled": labelled, "paths_relative_to": relative_to}


def _export_history(store: LabelStore, out: Path) -> dict[str, Any]:
    sha = {image["id"]: image["sha256"] for image in _all_images(store)}
    rows = [
        [e["id"], e["client_event_id"], e["image_id"], sha.get(e["image_id"]), e["kind"], e["label"], e["alt_label"],
         e["replaces_event_id"], e["restores_event_id"], e["user"], e["source"], e["note"], e["created_at"]]
        for e in store.label_history()
    ]
    _write_csv(out, HISTORY_COLUMNS, rows)
    return {"events": len(rows)}
