"""Dataset layouts on disk -> a plan of files with labels and splits (no store, nothing written).

See :mod:`ila_core.data.importers` for the layouts. Planning only reads the tree: each file becomes a
:class:`PlannedFile`, and files the layout already rules out (unlisted in a UFG annotation file, outside a
split folder, a CSV row pointing outside its archive) carry their rejection reason.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote

__all__ = ["PlannedFile", "plan", "detect_layout", "ufg_label", "is_hidden", "SPLIT_FOLDERS", "FORMATS"]

_logger = logging.getLogger(__name__)

FORMATS = ("auto", "imagefolder", "csv", "ufg")
# Folder / CSV split names -> store split (None = unassigned pool).
SPLIT_FOLDERS: dict[str, str | None] = {
    "train": "train", "training": "train", "holdout": "holdout", "test": "holdout", "val": "holdout",
    "valid": "holdout", "validation": "holdout", "unassigned": None,
}
_SPLITS = SPLIT_FOLDERS
_UFG_FLAT = re.compile(r"(\d+)_(\d+)_(train|test)\.[A-Za-z0-9]+", re.IGNORECASE)
_STAGE = re.compile(r"R\d+")
_APOSTROPHE_ESCAPED = re.compile(r"'[=+\-@\t\r]")


@dataclass(frozen=True)
class PlannedFile:
    """One planned file: where it is, how the user calls it, and what the layout says about it."""

    display: str
    path: Path | None = None
    label: str | None = None
    split: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # known to be rejected while planning


def ufg_label(class_id: int) -> str:
    """Cultivar name for a 1-based UFG class id: ``ufg_label(7) == "cultivar_0007"``."""
    if class_id < 1:
        raise ValueError(f"UFG class ids are 1-based, got {class_id}")
    return f"cultivar_{class_id:04d}"


def detect_layout(path: Path) -> str:
    """Name the layout: 'zip', 'image', 'csv', 'ufg-flat', 'ufg-anno', 'ufg-ageing' or 'imagefolder'."""
    path = Path(path)
    if path.is_file():
        return {".csv": "csv", ".zip": "zip"}.get(path.suffix.lower(), "image")
    root = _unwrap(path)
    if _stage_dirs(root):
        return "ufg-ageing"
    if _is_anno_root(root):
        return "ufg-anno"
    if _is_ufg_flat(_children(root)):
        return "ufg-flat"
    if _single_csv(root) is not None:
        return "csv"
    return "imagefolder"


def plan(path: Path, fmt: str, *, confine: bool = False, prefix: str = "") -> list[PlannedFile]:
    """Detect (or check) the layout under ``path`` and list its files.

    Args:
        path: folder, CSV or single image.
        fmt: 'auto', 'imagefolder', 'csv' or 'ufg'.
        confine: refuse CSV paths that leave the folder (set for extracted archives).
        prefix: prepended to every display name (``archive.zip!``).

    Raises:
        ValueError: ``fmt`` does not match what is there, or a CSV lacks ``path,label``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown import format {fmt!r} (expected one of {', '.join(FORMATS)})")
    layout = detect_layout(path)
    if layout == "zip":
        raise ValueError(f"{path} is an archive; extract it first (import_path does this safely)")
    if fmt == "csv" and layout != "csv":
        raise ValueError(f"no CSV with a 'path,label' header found at {path}")
    if fmt == "ufg" and not layout.startswith("ufg"):
        raise ValueError(f"{path} is not a UFG layout (flat <class>_<i>_<train|test> files, images/+anno/, R1..R6)")
    if fmt == "imagefolder" and path.is_file() and layout != "image":
        raise ValueError(f"an ImageFolder import needs a folder, got the file {path}")
    if fmt == "imagefolder" and layout not in ("imagefolder", "image"):
        layout = "imagefolder"  # asked for explicitly: read the tree as classes even if it looks like UFG
    if layout == "image":
        items = [PlannedFile(path.name, path)]
    else:
        root = path if layout == "csv" and path.is_file() else _unwrap(path)
        planner = {"csv": _plan_csv, "ufg-flat": _plan_ufg_flat, "ufg-anno": _plan_ufg_anno,
                   "ufg-ageing": _plan_ufg_ageing, "imagefolder": _plan_imagefolder}[layout]
        items = planner(root, confine)
    _logger.info("import %s: layout %s, %d files", path, layout, len(items))
    return [PlannedFile(prefix + i.display, i.path, i.label, i.split, i.metadata, i.error) for i in items]


def _plan_imagefolder(root: Path, confine: bool) -> list[PlannedFile]:
    split_first = any(p.is_dir() and p.name.lower() in _SPLITS for p in _children(root))
    items = []
    for file in _walk(root):
        parts = file.relative_to(root).parts
        display = "/".join(parts)
        split = None
        if split_first:
            if parts[0].lower() not in _SPLITS or len(parts) == 1:
                items.append(PlannedFile(display, error="not under a split folder (train/holdout/test/val)"))
                continue
            split, parts = _SPLITS[parts[0].lower()], parts[1:]
        label = unquote(parts[0]) if len(parts) > 1 else None
        items.append(PlannedFile(display, file, label, split))
    return items


def _plan_csv(source: Path, confine: bool) -> list[PlannedFile]:
    csv_path = source if source.is_file() else _single_csv(source)
    if csv_path is None:
        raise ValueError(f"no CSV with a 'path,label' header found in {source}")
    base = csv_path.parent.resolve()
    items = []
    with io.StringIO(_read_utf8(csv_path), newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip().lower() for h in next(reader, [])]
        if "path" not in header or "label" not in header:
            raise ValueError(f"{csv_path.name}: the header must start with path,label[,split], got {header[:5]}")
        col = {name: header.index(name) for name in ("path", "label", "split") if name in header}
        for line_no, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue
            cells = {name: (row[i].strip() if i < len(row) else "") for name, i in col.items()}
            items.append(_csv_item(cells, base, confine, f"{csv_path.name}:{line_no}"))
    return items


def _read_utf8(path: Path) -> str:
    """The CSV's text; a file in another encoding is refused naming the first bad line, not half-read."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{path.name}: line {line} is not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                         "save the CSV as UTF-8 and import it again") from None  # fmt: skip


def _csv_item(cells: dict[str, str], base: Path, confine: bool, where: str) -> PlannedFile:
    raw_path = cells["path"]
    display = raw_path or where
    if not raw_path:
        return PlannedFile(display, error=f"{where}: empty path")
    split_cell = cells.get("split", "").lower()
    if split_cell and split_cell not in _SPLITS:
        return PlannedFile(display, error=f"{where}: unknown split {split_cell!r} (train or holdout)")
    label = cells["label"]
    if _APOSTROPHE_ESCAPED.match(label):
        label = label[1:]  # undo the exporter's formula neutralisation
    candidate = Path(raw_path)
    if confine and (candidate.is_absolute() or ".." in PurePosixPath(raw_path.replace("\\", "/")).parts):
        return PlannedFile(display, error=f"{where}: path must stay inside the archive")
    full = (base / candidate).resolve()
    if confine and not full.is_relative_to(base):
        return PlannedFile(display, error=f"{where}: path must stay inside the archive")
    if not full.is_file():
        return PlannedFile(display, error=f"{where}: file not found")
    return PlannedFile(display, full, label or None, _SPLITS[split_cell] if split_cell else None)


def _plan_ufg_flat(root: Path, confine: bool, stage: str | None = None) -> list[PlannedFile]:
    items = []
    for file in _walk(root):
        match = _UFG_FLAT.fullmatch(file.name)
        if match is None:
            items.append(PlannedFile(file.name, error="name is not <class>_<index>_<train|test>"))
            continue
        class_id, split = int(match.group(1)), "train" if match.group(3).lower() == "train" else "holdout"
        if class_id < 1:
            items.append(PlannedFile(file.name, error="UFG class ids are 1-based"))
            continue
        items.append(PlannedFile(file.name, file, ufg_label(class_id), split, {"ufg_class": class_id}))
    return items


def _plan_ufg_anno(root: Path, confine: bool, stage: str | None = None) -> list[PlannedFile]:
    images, prefix = root / "images", f"{stage}/" if stage else ""
    meta = {"growth_stage": stage} if stage else {}
    items, listed = [], set()
    for split_file, split in (("train.txt", "train"), ("test.txt", "holdout")):
        anno = root / "anno" / split_file
        if not anno.is_file():
            continue
        for line_no, line in enumerate(anno.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{prefix}anno/{split_file}:{line_no}"
            fields = line.strip().rsplit(None, 1)
            name, cls = (fields[0], fields[1]) if len(fields) == 2 else ("", "")
            if not cls.isdigit() or int(cls) < 1:
                items.append(PlannedFile(where, error=f"{where}: expected '<file> <class 1-based>'"))
                continue
            file = (images / name).resolve()
            if not file.is_relative_to(images.resolve()):
                items.append(PlannedFile(where, error=f"{where}: path must stay inside images/"))
                continue
            listed.add(file)
            if not file.is_file():
                items.append(PlannedFile(f"{prefix}images/{name}", error=f"listed in {where} but missing"))
                continue
            metadata = {**meta, "ufg_class": int(cls)}
            items.append(PlannedFile(f"{prefix}images/{name}", file, ufg_label(int(cls)), split, metadata))
    for file in _walk(images):
        if file.resolve() not in listed:
            display = f"{prefix}images/{file.relative_to(images).as_posix()}"
            items.append(PlannedFile(display, error="not listed in anno/train.txt or anno/test.txt"))
    return items


def _plan_ufg_ageing(root: Path, confine: bool) -> list[PlannedFile]:
    return [item for stage_dir in _stage_dirs(root) for item in _plan_ufg_anno(stage_dir, confine, stage_dir.name)]


def is_hidden(name: str) -> bool:
    # dotfiles, macOS resource forks and zip metadata are not data; skipped silently
    return name.startswith(".") or name in ("__MACOSX", "Thumbs.db", "desktop.ini")


def _children(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if not is_hidden(p.name)) if root.is_dir() else []


def _walk(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not is_hidden(f))
    return out


def _unwrap(root: Path) -> Path:
    """Descend through a lone wrapper folder (zips usually have one), but never into a lone class folder."""
    while True:
        children = _children(root)
        if len(children) != 1 or not children[0].is_dir():
            return root
        child = children[0]
        if child.name.lower() in _SPLITS or child.name in ("images", "anno") or _STAGE.fullmatch(child.name):
            return root
        inner = _children(child)
        if not (any(p.is_dir() for p in inner) or _is_ufg_flat(inner) or _single_csv(child) is not None):
            return root  # root/<one cultivar>/*.png: the folder is a label, not a wrapper
        root = child


def _is_ufg_flat(children: list[Path]) -> bool:
    files = [p for p in children if p.is_file()]
    return bool(files) and len(files) == len(children) and all(_UFG_FLAT.fullmatch(p.name) for p in files)


def _is_anno_root(root: Path) -> bool:
    anno = root / "anno"
    return (root / "images").is_dir() and ((anno / "train.txt").is_file() or (anno / "test.txt").is_file())


def _stage_dirs(root: Path) -> list[Path]:
    return [p for p in _children(root) if p.is_dir() and _STAGE.fullmatch(p.name) and _is_anno_root(p)]


def _single_csv(root: Path) -> Path | None:
    found = []
    for p in _children(root):
        if p.is_file() and p.suffix.lower() == ".csv":
            with p.open(encoding="utf-8-sig", errors="replace") as fh:
                header = [h.strip().lower() for h in next(csv.reader([fh.readline()]), [])]
            if "path" in header and "label" in header:
                found.append(p)
    return found[0] if len(found) == 1 else None
