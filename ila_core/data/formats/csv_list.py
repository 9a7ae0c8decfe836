"""Our own CSV list: header ``path,label[,split]`` plus the columns our CSV export writes.

* ``path`` is relative to the CSV (or absolute, outside zips). A relative path that is not there is looked
  up in the data directory being imported into: a CSV exported away from the data directory (a download)
  holds paths relative to the data directory (``images/ab/<sha256>.png``), so it imports into the same app
  again (as duplicates that take the labels they lacked).
* ``label`` holds hard labels; an empty one imports unlabelled. ``label_kind`` ``unsure`` / ``between`` with
  ``tentative_label`` and ``alt_label`` (what the exporter writes) import as those kinds, so a round trip keeps
  every answer. A leading apostrophe that our exporter added before ``= + - @`` is removed.
* Every rejection carries its CSV line in ``line``, never inside the reason.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path, PurePosixPath

from ..tree import SPLIT_FOLDERS, PlannedFile, children

__all__ = ["single_csv", "has_list_header", "plan_csv", "read_utf8"]

_APOSTROPHE_ESCAPED = re.compile(r"'[=+\-@\t\r]")
_COLUMNS = ("path", "label", "split", "label_kind", "tentative_label", "alt_label")


def has_list_header(header: list[str]) -> bool:
    """True for a header with ``path`` and ``label`` columns."""
    names = [h.strip().lower() for h in header]
    return "path" in names and "label" in names


def single_csv(root: Path) -> Path | None:
    """The one CSV with a ``path,label`` header at the top of ``root``, or None (none, or several)."""
    found = []
    for p in children(root):
        if p.is_file() and p.suffix.lower() == ".csv":
            with p.open(encoding="utf-8-sig", errors="replace") as fh:
                if has_list_header(next(csv.reader([fh.readline()]), [])):
                    found.append(p)
    return found[0] if len(found) == 1 else None


def read_utf8(path: Path) -> str:
    """The CSV's text; a file in another encoding is refused naming the first bad line, not half-read."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{path.name}: line {line} is not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                         "save the CSV as UTF-8 and import it again") from None  # fmt: skip


def plan_csv(source: Path, confine: bool, data_dir: Path | None = None) -> tuple[list[PlannedFile], set[Path]]:
    """One item per non-empty row of the CSV at ``source`` (a file, or a folder holding exactly one).

    Args:
        source: the CSV, or the folder that holds it.
        confine: refuse paths that leave the CSV's folder (set for extracted archives).
        data_dir: where to look up relative paths that are not beside the CSV (see the module docstring).

    Raises:
        ValueError: no CSV, a header without ``path,label``, or text that is not UTF-8.
    """
    csv_path = source if source.is_file() else single_csv(source)
    if csv_path is None:
        raise ValueError(f"no CSV with a 'path,label' header found in {source}")
    base = csv_path.parent.resolve()
    fallback = None if confine or data_dir is None else Path(data_dir).resolve()
    items = []
    with io.StringIO(read_utf8(csv_path), newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip().lower() for h in next(reader, [])]
        if not has_list_header(header):
            raise ValueError(f"{csv_path.name}: the header must start with path,label[,split], got {header[:5]}")
        col = {name: header.index(name) for name in _COLUMNS if name in header}
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            cells = {name: (row[i].strip() if i < len(row) else "") for name, i in col.items()}
            item = _csv_item(cells, base, confine, fallback, csv_path.name)
            items.append(PlannedFile(item.display, item.path, item.label, item.split, item.metadata, item.error,
                                     reader.line_num, item.kind, item.alt_label))  # fmt: skip
    return items, {csv_path}


def _unescape(cell: str) -> str:
    return cell[1:] if _APOSTROPHE_ESCAPED.match(cell) else cell  # undo the exporter's formula neutralisation


def _csv_item(cells: dict[str, str], base: Path, confine: bool, fallback: Path | None, name: str) -> PlannedFile:
    raw_path = cells["path"]
    display = raw_path or name
    if not raw_path:
        return PlannedFile(display, error="empty path")
    split_cell = cells.get("split", "").lower()
    if split_cell and split_cell not in SPLIT_FOLDERS:
        return PlannedFile(display, error=f"unknown split {split_cell!r} (train or holdout)")
    kind = cells.get("label_kind", "").lower() or "label"
    if kind not in ("label", "unsure", "between"):
        return PlannedFile(display, error=f"unknown label_kind {kind!r} (label, unsure or between)")
    label = _unescape(cells["label"] if kind == "label" else cells.get("tentative_label", "")) or None
    alt = (_unescape(cells.get("alt_label", "")) or None) if kind == "between" else None
    if kind == "between" and (label is None or alt is None):
        return PlannedFile(display, error="label_kind 'between' needs tentative_label and alt_label")
    candidate = PurePosixPath(raw_path.replace("\\", "/"))
    climbs = Path(raw_path).is_absolute() or ".." in candidate.parts
    if confine and climbs:
        return PlannedFile(display, error="path must stay inside the archive")
    full = (base / Path(raw_path)).resolve()
    if confine and not full.is_relative_to(base):
        return PlannedFile(display, error="path must stay inside the archive")
    if not full.is_file() and fallback is not None and not climbs:
        in_data = (fallback / Path(*candidate.parts)).resolve()
        full = in_data if in_data.is_relative_to(fallback) and in_data.is_file() else full
    if not full.is_file():
        return PlannedFile(display, error="file not found")
    split = SPLIT_FOLDERS[split_cell] if split_cell else None
    return PlannedFile(display, full, label, split, kind=kind, alt_label=alt)
