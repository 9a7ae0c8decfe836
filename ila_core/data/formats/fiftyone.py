"""FiftyOne's ``FiftyOneImageClassificationDataset`` layout: ``data/`` + ``labels.json``.

``labels.json`` is ``{"classes": [...], "labels": {<key>: <target>}}``. A key is a file's path below ``data/``
without its extension (usually a bare uuid); a target is a class index into ``classes`` when ``classes`` is
given, else the label itself; ``{"label": <target>, "confidence": ...}`` is the same with a confidence; ``null``
or a missing key means unlabelled. A list of targets (multi-label) or of boxes (FiftyOne's detection JSON) is
refused per file: a cultivar label is one per image. The layout may also sit once per split folder
(``train/data`` + ``train/labels.json``, ``test/...``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..tree import PlannedFile, children, listed_file, read_json, split_of, walk

__all__ = ["NAME", "label_files", "plan_fiftyone"]

NAME = "fiftyone-classification"


def _is_classification_json(path: Path) -> bool:
    try:
        obj = read_json(path)
    except (ValueError, OSError):
        return False
    return isinstance(obj, dict) and isinstance(obj.get("labels"), dict) and "images" not in obj


def label_files(root: Path) -> list[Path]:
    """The ``labels.json`` files (beside a ``data/`` folder) of a FiftyOne classification tree, or []."""
    bases = [root] + [p for p in children(root) if p.is_dir() and split_of(p.name)[0]]
    found = [b / "labels.json" for b in bases if (b / "labels.json").is_file() and (b / "data").is_dir()]
    return [f for f in found if _is_classification_json(f)]


def _target_label(target: Any, classes: list[Any] | None) -> tuple[str | None, str | None]:
    """``(label, None)`` or ``(None, why)`` for one ``labels`` value; ``(None, None)`` means unlabelled."""
    if isinstance(target, dict):
        if "bounding_box" in target:
            return None, "a detection, not an image classification"
        target = target.get("label")
    if isinstance(target, list):
        if len(target) != 1:
            return None, f"{len(target)} labels (multi-label); a cultivar label is one per image"
        return _target_label(target[0], classes)
    if target is None:
        return None, None
    if isinstance(target, int) and not isinstance(target, bool):
        if classes is None:
            return str(target), None
        if not 0 <= target < len(classes):
            return None, f"class index {target} is not in 'classes' ({len(classes)} classes)"
        return str(classes[target]), None
    if isinstance(target, str):
        return target, None
    return None, f"unreadable label {target!r}"


def _plan_one(root: Path, labels_json: Path) -> list[PlannedFile]:
    base = labels_json.parent
    data = base / "data"
    obj = read_json(labels_json)
    classes = obj.get("classes") if isinstance(obj.get("classes"), list) else None
    labels: dict[str, Any] = obj["labels"]
    is_split, split = split_of(base.name) if base != root else (False, None)
    where = labels_json.relative_to(root).as_posix()
    items, by_key = [], {}
    for file in walk(data):
        key = file.relative_to(data).with_suffix("").as_posix()
        by_key.setdefault(key, []).append(file)
    for key, value in labels.items():
        _, why = listed_file(data, key)  # absolute keys (media outside data/) are refused too
        if why is not None:
            items.append(PlannedFile(f"{where}:{key}", error=f"{where}: {why}"))
        elif key not in by_key:
            items.append(PlannedFile(f"{where}:{key}", error=f"listed in {where} but not found in data/"))
    for key, files in sorted(by_key.items()):
        label, why = _target_label(labels.get(key), classes)
        for file in files:
            display = file.relative_to(root).as_posix()
            if len(files) > 1:
                items.append(PlannedFile(display, error=f"several files in data/ share the key {key!r} of {where}"))
            elif why is not None:
                items.append(PlannedFile(display, error=f"{where}: {why}"))
            else:
                meta = {"fiftyone_key": key}
                items.append(PlannedFile(display, file, label, split if is_split else None, meta))
    return items


def plan_fiftyone(root: Path, confine: bool) -> tuple[list[PlannedFile], set[Path]]:
    """Plan a FiftyOne classification tree: one item per file in each ``data/``, labels from ``labels.json``.

    Files elsewhere in the tree are rejected (they are not part of the layout).

    Returns:
        The planned files and the label files read.
    """
    found = label_files(root)
    if not found:
        raise ValueError(f"no FiftyOne labels.json beside a data/ folder in {root}")
    items = [item for labels_json in found for item in _plan_one(root, labels_json)]
    covered = {f.parent / "data" for f in found}
    for file in walk(root):
        if file in found or any(file.is_relative_to(d) for d in covered):
            continue
        items.append(PlannedFile(file.relative_to(root).as_posix(), error="not in a data/ folder beside labels.json"))
    return items, set(found)
