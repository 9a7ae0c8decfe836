"""Hugging Face ``imagefolder`` trees with metadata files, and the dataset card our ImageFolder export writes.

Reading: a ``metadata.csv`` or ``metadata.jsonl`` anywhere in the tree lists images by ``file_name`` (relative
to the metadata file's folder) with one row each. As in ``datasets``, a tree with metadata takes no labels from
folder names: the cultivar is the ``label`` column (a tree whose metadata has no ``label`` column is refused,
naming the file). Integer labels are class indices when ``README.md``'s ``dataset_info`` declares the class
names (``class_label: names``), as ``datasets`` writes them; without names the value itself is the label.
The split comes from the first folder (``train/``, ``test/``, ``validation/`` ...); ``datasets`` reads a split's
metadata only inside its split folder, this importer also reads one above the split folders. Images that no
metadata row lists are rejected (``datasets`` would skip them). ``metadata.parquet`` is not read: the tree is
refused.

Writing: :func:`dataset_card` is the ``README.md`` whose ``configs`` name every split folder of an ImageFolder
export, so ``datasets.load_dataset(<folder>)`` loads all of them (``load_dataset("imagefolder", data_dir=...)``
knows only its split keywords and loads ``train`` and ``test``).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from ..tree import PlannedFile, listed_file, split_of, walk

__all__ = ["NAME", "METADATA_NAMES", "metadata_files", "plan_hf_imagefolder", "dataset_card"]

_logger = logging.getLogger(__name__)

NAME = "hf-imagefolder"
METADATA_NAMES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")
_SCALARS = (str, int, float, bool)


def metadata_files(root: Path) -> list[Path]:
    """Every Hugging Face metadata file below ``root``, in a stable order."""
    return [p for p in walk(root) if p.name.lower() in METADATA_NAMES]


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line, row)`` pairs of a metadata file."""
    rel = path.name
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            return [(reader.line_num, row) for row in reader]
    rows = []
    with path.open(encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{rel}:{line_no} is not a JSON object: {exc}") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{rel}:{line_no} is not a JSON object")
            rows.append((line_no, row))
    return rows


def _class_names(root: Path) -> list[str] | None:
    """Class names of the ``label`` feature declared in ``README.md``'s YAML header, if any."""
    card = root / "README.md"
    if not card.is_file():
        return None
    text = card.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    import yaml  # only needed for integer labels; PyYAML comes with the runtime requirements

    try:
        header = yaml.safe_load(text.split("---", 2)[1]) or {}
        features = header.get("dataset_info", {}).get("features", [])
        for feature in features:
            if feature.get("name") == "label" and isinstance(feature.get("dtype"), dict):
                names = feature["dtype"]["class_label"]["names"]
                return [names[k] for k in sorted(names, key=int)] if isinstance(names, dict) else list(names)
    except (yaml.YAMLError, AttributeError, KeyError, TypeError, ValueError, IndexError):
        _logger.warning("could not read class names from %s", card)
    return None


def _label(value: Any, names: list[str] | None) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"label {value!r} is not a cultivar name")
    if names is not None and (isinstance(value, int) or value.strip().isdigit()):
        index = int(value)  # a ClassLabel index: datasets writes these, with the names in README.md
        if not 0 <= index < len(names):
            raise ValueError(f"class index {index} is not among the {len(names)} class names in README.md")
        return str(names[index])
    return str(value).strip()


def plan_hf_imagefolder(root: Path, confine: bool) -> tuple[list[PlannedFile], set[Path]]:
    """Plan a Hugging Face imagefolder tree with metadata files (see the module docstring).

    Returns:
        The planned files and the metadata files read.

    Raises:
        ValueError: naming the file, for a parquet metadata file, a metadata file without ``file_name`` or
            ``label``.
    """
    found = metadata_files(root)
    if not found:
        raise ValueError(f"no metadata.csv or metadata.jsonl in {root}")
    names: list[str] | None = None
    items, listed = [], set()
    for meta in found:
        where = meta.relative_to(root).as_posix()
        if meta.suffix.lower() == ".parquet":
            raise ValueError(f"{where}: metadata.parquet is not read; write the same rows as metadata.csv or "
                             "metadata.jsonl")  # fmt: skip
        rows = _rows(meta)
        columns = set().union(*(row.keys() for _, row in rows)) if rows else set()
        if rows and "file_name" not in columns:
            raise ValueError(f"{where}: no 'file_name' column (columns: {', '.join(sorted(columns))})")
        if rows and "label" not in columns:
            raise ValueError(f"{where}: no 'label' column (columns: {', '.join(sorted(columns))}); the cultivar "
                             "is read from 'label', never guessed from folder names")  # fmt: skip
        for line_no, row in rows:
            file, why = listed_file(meta.parent, str(row.get("file_name") or ""))
            if why is None and not file.is_file():
                why = f"listed in {where} but missing"
            if why is not None:
                items.append(PlannedFile(where, error=why, line=line_no))
                continue
            if names is None:
                names = _class_names(root) or []
            listed.add(file)
            rel = file.relative_to(root.resolve())
            try:
                label = _label(row.get("label"), names or None)
            except ValueError as exc:
                items.append(PlannedFile(rel.as_posix(), error=f"{where}: {exc}", line=line_no))
                continue
            is_split, split = split_of(rel.parts[0]) if len(rel.parts) > 1 else (False, None)
            extra = {k: v for k, v in row.items() if k not in ("file_name", "label") and isinstance(v, _SCALARS)}
            metadata = {k: v[:200] if isinstance(v, str) else v for k, v in list(extra.items())[:20]}
            items.append(PlannedFile(rel.as_posix(), file, label, split if is_split else None, metadata, line=line_no))
    consumed = {m.resolve() for m in found}
    for file in walk(root):
        if file.resolve() not in listed and file.resolve() not in consumed:
            items.append(PlannedFile(file.relative_to(root).as_posix(), error="not listed in any metadata file"))
    return items, set(found)


def dataset_card(split_folders: list[str]) -> str:
    """``README.md`` for an ImageFolder export: one ``datasets`` split per folder, labels from folder names."""
    lines = ["---", "configs:", "- config_name: default", "  drop_labels: false", "  data_files:"]
    for folder in split_folders:
        lines += [f"  - split: {folder}", f'    path: "{folder}/**"']
    lines += [
        "---",
        "",
        "# ILA Studio ImageFolder export",
        "",
        "`<split>/<cultivar>/<sha256>.<ext>`: `train/` and `test/` (the holdout) as ILA Studio keeps them, and",
        "`unassigned/` for labelled images in no split. Cultivar folder names are percent-escaped where a file",
        "system would refuse the character (`urllib.parse.unquote` gives the name back).",
        "",
        "- `datasets.load_dataset(\"<this folder>\")` loads every split listed above.",
        "- `datasets.load_dataset(\"imagefolder\", data_dir=\"<this folder>\")` loads `train` and `test` only.",
        "- `torchvision.datasets.ImageFolder(\"<this folder>/train\")` reads one split.",
        "",
    ]
    return "\n".join(lines)
