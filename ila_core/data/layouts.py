"""Dataset layouts on disk -> a plan of files with labels and splits (no store, nothing written).

See :mod:`ila_core.data.importers` for the layouts; each other tool's format has its own module under
:mod:`ila_core.data.formats`. Planning only reads the tree: each file becomes a :class:`PlannedFile`, and
files the layout already rules out (unlisted in an annotation file, outside a split folder, a CSV row pointing
outside its archive) carry their rejection reason.

A tree that holds a label file (JSON, CSV, TXT, XML, YAML, parquet ...) that the chosen layout did not read
is refused, naming the file, instead of being imported with labels guessed from folder names; only an
explicit ``fmt="imagefolder"`` reads folder names regardless.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote

from .formats import coco, fiftyone, hf_imagefolder, label_studio
from .formats.csv_list import plan_csv, single_csv
from .formats.ufg import (
    is_anno_root,
    is_stage_name,
    is_ufg_flat,
    plan_ufg_ageing,
    plan_ufg_anno,
    plan_ufg_flat,
    stage_dirs,
    ufg_label,
)
from .tree import SPLIT_FOLDERS, PlannedFile, children, is_hidden, is_label_file, split_of, walk

__all__ = ["PlannedFile", "plan", "plan_layout", "detect_layout", "ufg_label", "is_hidden", "SPLIT_FOLDERS",
           "FORMATS", "LAYOUTS_OF_FORMAT"]  # fmt: skip

_logger = logging.getLogger(__name__)

FORMATS = ("auto", "imagefolder", "csv", "ufg", "fiftyone", "coco", "hf-imagefolder", "labelstudio")
# Which detected layouts each explicit ``fmt`` accepts.
LAYOUTS_OF_FORMAT = {
    "csv": ("csv",), "ufg": ("ufg-flat", "ufg-anno", "ufg-ageing"), "fiftyone": (fiftyone.NAME,),
    "coco": (coco.NAME,), "hf-imagefolder": (hf_imagefolder.NAME,), "labelstudio": label_studio.LAYOUTS,
}  # fmt: skip
_EXPECTED = {
    "csv": "CSV with a 'path,label' header", "labelstudio": "Label Studio export (JSON, JSON_MIN or CSV)",
    "ufg": "UFG layout (flat <class>_<i>_<train|test> files, images/+anno/, R1..R6)",
    "fiftyone": "FiftyOne classification export (data/ + labels.json)",
    "coco": "COCO-style tree (a JSON with 'images' and 'annotations')",
    "hf-imagefolder": "Hugging Face imagefolder with metadata.csv or metadata.jsonl",
}  # fmt: skip
_UNLABELLED_FOLDERS = ("_unlabeled", "_unlabelled")  # FiftyOne's ImageClassificationDirectoryTree


def detect_layout(path: Path) -> str:
    """Name the layout at ``path``.

    One of 'zip', 'image', 'csv', 'json' (a JSON file that is no Label Studio export), 'labelstudio-json',
    'labelstudio-json-min', 'labelstudio-csv', 'ufg-flat', 'ufg-anno', 'ufg-ageing', 'fiftyone-classification',
    'coco', 'hf-imagefolder' or 'imagefolder'.
    """
    path = Path(path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".csv", ".json"):
            return label_studio.sniff(path) or suffix[1:]
        return "zip" if suffix == ".zip" else "image"
    root = _unwrap(path)
    if stage_dirs(root):
        return "ufg-ageing"
    if is_anno_root(root):
        return "ufg-anno"
    if is_ufg_flat(children(root)):
        return "ufg-flat"
    if single_csv(root) is not None:
        return "csv"
    if fiftyone.label_files(root):
        return fiftyone.NAME
    if coco.coco_files(root):
        return coco.NAME
    if hf_imagefolder.metadata_files(root):
        return hf_imagefolder.NAME
    return "imagefolder"


def plan(path: Path, fmt: str, *, confine: bool = False, prefix: str = "", data_dir: Path | None = None
         ) -> list[PlannedFile]:  # fmt: skip
    """The files of :func:`plan_layout`, without the layout name."""
    return plan_layout(path, fmt, confine=confine, prefix=prefix, data_dir=data_dir)[1]


def plan_layout(
    path: Path, fmt: str, *, confine: bool = False, prefix: str = "", data_dir: Path | None = None
) -> tuple[str, list[PlannedFile]]:
    """Detect (or check) the layout under ``path`` and list its files.

    Args:
        path: folder, CSV or single image (Label Studio exports are not planned: see
            :mod:`ila_core.data.formats.label_studio`).
        fmt: one of :data:`FORMATS`.
        confine: refuse CSV paths that leave the folder (set for extracted archives).
        prefix: prepended to every display name (``archive.zip!``).
        data_dir: the data directory being imported into (CSV paths relative to it are found there too).

    Returns:
        ``(layout, files)``.

    Raises:
        ValueError: ``fmt`` does not match what is there, a label file is malformed, or the tree holds a label
            file that the layout does not read (the message names it).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown import format {fmt!r} (expected one of {', '.join(FORMATS)})")
    layout = detect_layout(path)
    if layout == "zip":
        raise ValueError(f"{path} is an archive; extract it first (import_path does this safely)")
    if layout in label_studio.LAYOUTS:
        raise ValueError(f"{path.name} is a Label Studio export: its annotations are imported by import_path")
    if layout == "json":
        raise ValueError(f"{path.name}: a JSON file that is no Label Studio export (JSON or JSON_MIN); import "
                         "the folder that holds it (FiftyOne labels.json, COCO annotations)")  # fmt: skip
    if fmt == "imagefolder" and path.is_file() and layout != "image":
        raise ValueError(f"an ImageFolder import needs a folder, got the file {path}")
    if fmt == "imagefolder" and layout not in ("imagefolder", "image"):
        layout = "imagefolder"  # asked for explicitly: read the tree as classes, whatever else it holds
    elif fmt not in ("auto", "imagefolder") and layout not in LAYOUTS_OF_FORMAT[fmt]:
        raise ValueError(f"{path} is not a {_EXPECTED[fmt]} (found: {layout})")
    if layout == "image":
        items, read = [PlannedFile(path.name, path)], set()
    else:
        root = path if layout == "csv" and path.is_file() else _unwrap(path)
        if layout == "csv":
            items, read = plan_csv(root, confine, data_dir)
        else:
            planner = {"ufg-flat": plan_ufg_flat, "ufg-anno": plan_ufg_anno, "ufg-ageing": plan_ufg_ageing,
                       fiftyone.NAME: fiftyone.plan_fiftyone, coco.NAME: coco.plan_coco,
                       hf_imagefolder.NAME: hf_imagefolder.plan_hf_imagefolder,
                       "imagefolder": _plan_imagefolder}[layout]  # fmt: skip
            items, read = planner(root, confine)
        if fmt != "imagefolder" and root.is_dir():
            _refuse_unread_label_files(root, read, layout)
    _logger.info("import %s: layout %s, %d files", path, layout, len(items))
    return layout, [replace(i, display=prefix + i.display) for i in items]


def _refuse_unread_label_files(root: Path, read: set[Path], layout: str) -> None:
    read = {p.resolve() for p in read}
    unread = [p for p in walk(root) if is_label_file(p) and p.resolve() not in read]
    if not unread:
        return
    names = ", ".join(p.relative_to(root).as_posix() for p in unread[:3]) + (" ..." if len(unread) > 3 else "")
    hint = label_studio.hint(unread[0])
    raise ValueError(
        f"{names}: label file{'s' if len(unread) > 1 else ''} that the {layout} layout does not read. Refusing to "
        f"import rather than take labels from folder names{hint}. Remove the file, or import with "
        "--format imagefolder to use the folder names anyway."
    )


def _plan_imagefolder(root: Path, confine: bool) -> tuple[list[PlannedFile], set[Path]]:
    split_first = any(p.is_dir() and split_of(p.name)[0] for p in children(root))
    items = []
    for file in walk(root):
        parts = file.relative_to(root).parts
        display = "/".join(parts)
        split = None
        if split_first:
            is_split, split = split_of(parts[0])
            if not is_split or len(parts) == 1:
                items.append(PlannedFile(display, error="not under a split folder (train/holdout/test/val)"))
                continue
            parts = parts[1:]
        label = unquote(parts[0]) if len(parts) > 1 and parts[0].lower() not in _UNLABELLED_FOLDERS else None
        items.append(PlannedFile(display, file, label, split))
    return items, set()


def _unwrap(root: Path) -> Path:
    """Descend through a lone wrapper folder (zips usually have one), but never into a lone class folder."""
    while True:
        entries = children(root)
        if len(entries) != 1 or not entries[0].is_dir():
            return root
        child = entries[0]
        if split_of(child.name)[0] or child.name in ("images", "anno") or is_stage_name(child.name):
            return root
        inner = children(child)
        known = any(p.name.lower() in hf_imagefolder.METADATA_NAMES for p in inner) or coco.coco_files(child)
        if not (any(p.is_dir() for p in inner) or is_ufg_flat(inner) or single_csv(child) is not None or known):
            return root  # root/<one cultivar>/*.png: the folder is a label, not a wrapper
        root = child
