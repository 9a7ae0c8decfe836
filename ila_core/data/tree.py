"""What every layout planner shares: the planned-file record, split folder names, tree walking, label files.

Planning only reads the tree (see :mod:`ila_core.data.layouts`); nothing here writes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = [
    "PlannedFile",
    "SPLIT_FOLDERS",
    "LABEL_FILE_SUFFIXES",
    "MAX_LABEL_FILE_BYTES",
    "is_hidden",
    "is_label_file",
    "is_doc_file",
    "children",
    "walk",
    "split_of",
    "listed_file",
    "read_json",
]

# Folder / CSV split names -> store split (None = unassigned pool). Hugging Face's split keywords included.
SPLIT_FOLDERS: dict[str, str | None] = {
    "train": "train", "training": "train", "holdout": "holdout", "test": "holdout", "val": "holdout",
    "valid": "holdout", "validation": "holdout", "unassigned": None,
}  # fmt: skip
# Files that carry labels in some tool's format. A tree holding one that no planner read is refused, never
# imported with labels guessed from folder names (a FiftyOne export would otherwise be labelled "data").
LABEL_FILE_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv", ".tsv", ".txt", ".xml", ".yaml", ".yml", ".parquet",
                       ".arrow", ".mat")  # fmt: skip
_DOC_STEMS = {"readme", "license", "licence", "notice", "citation", "changelog", "authors"}
_DOC_SUFFIXES = ("", ".md", ".txt", ".rst", ".html")
MAX_LABEL_FILE_BYTES = 512_000_000  # a COCO file of a few million images; larger ones are refused, not parsed


@dataclass(frozen=True)
class PlannedFile:
    """One planned file: where it is, how the user calls it, and what the layout says about it.

    ``kind`` is the label kind to record ('label', 'unsure' or 'between'); an 'unsure' item may have no label.
    ``line`` is the line of the label file that named the file (CSV rows, annotation lists), else None.
    """

    display: str
    path: Path | None = None
    label: str | None = None
    split: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # known to be rejected while planning
    line: int | None = None
    kind: str = "label"
    alt_label: str | None = None


def is_hidden(name: str) -> bool:
    """Dotfiles, macOS resource forks and zip metadata are not data; they are skipped silently."""
    return name.startswith(".") or name in ("__MACOSX", "Thumbs.db", "desktop.ini")


def is_label_file(path: Path) -> bool:
    """True for files that look like some tool's labels (by suffix; README/LICENSE-like names excepted)."""
    return path.suffix.lower() in LABEL_FILE_SUFFIXES and path.stem.lower() not in _DOC_STEMS


def is_doc_file(name: str) -> bool:
    """README, LICENSE and the like (a dataset card included): documentation, skipped like hidden files."""
    path = Path(name)
    return path.stem.lower() in _DOC_STEMS and path.suffix.lower() in _DOC_SUFFIXES


def children(root: Path) -> list[Path]:
    """The visible entries of a folder, sorted (empty for a file)."""
    return sorted(p for p in root.iterdir() if not is_hidden(p.name)) if root.is_dir() else []


def walk(root: Path) -> list[Path]:
    """Every visible file below ``root``, in a stable order."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not (is_hidden(f) or is_doc_file(f)))
    return out


def split_of(folder: str) -> tuple[bool, str | None]:
    """``(is_split_folder, store_split)`` for a folder name: ``split_of("test") == (True, "holdout")``."""
    key = folder.lower()
    return (key in SPLIT_FOLDERS, SPLIT_FOLDERS.get(key))


def listed_file(base: Path, name: str) -> tuple[Path | None, str | None]:
    """Resolve a file name that a label file lists, relative to ``base``; ``(path, None)`` or ``(None, why)``.

    Absolute names and names that climb out of ``base`` are refused whatever the import: a label file must
    not be able to point the importer at other files on the server.
    """
    posix = PurePosixPath(name.replace("\\", "/"))
    if not name or posix.is_absolute() or ".." in posix.parts or (len(name) > 1 and name[1] == ":"):
        return None, "path must be relative and stay inside the dataset folder"
    full = (base / Path(*posix.parts)).resolve()
    if not full.is_relative_to(base.resolve()):
        return None, "path must be relative and stay inside the dataset folder"
    return full, None


def read_json(path: Path) -> Any:
    """Parse a JSON label file, refusing files too large to parse safely.

    Raises:
        ValueError: naming the file, for an oversized or malformed file.
    """
    size = path.stat().st_size
    if size > MAX_LABEL_FILE_BYTES:
        raise ValueError(f"{path.name} is {size / 1e6:.0f} MB; label files over {MAX_LABEL_FILE_BYTES / 1e6:.0f} MB "
                         "are not read")  # fmt: skip
    try:
        with path.open(encoding="utf-8-sig") as fh:
            return json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path.name} is not valid UTF-8 JSON: {exc}") from exc
