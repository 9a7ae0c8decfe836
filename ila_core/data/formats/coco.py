"""COCO-style annotation files: ``{"images": [...], "annotations": [...], "categories": [...]}``.

Found as any ``*.json`` with an ``images`` list at the top of the tree or of a split folder (``annotations.json``
beside ``images/``, FiftyOne's ``labels.json`` beside ``data/``, Roboflow's ``train/_annotations.coco.json``
beside its images). An image's ``file_name`` is looked up below ``data/``, ``images/`` or the JSON's own folder.
Its cultivar is the category of its annotations (or an ``category_id`` on the image entry itself): none means
unlabelled, two different categories are refused for that image (a cultivar label is one per image).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from ..tree import PlannedFile, children, listed_file, read_json, split_of, walk

__all__ = ["NAME", "coco_files", "plan_coco"]

NAME = "coco"


def _is_coco(path: Path) -> bool:
    try:
        obj = read_json(path)
    except (ValueError, OSError):
        return False
    return isinstance(obj, dict) and isinstance(obj.get("images"), list) and (
        "annotations" in obj or "categories" in obj
    )


def coco_files(root: Path) -> list[Path]:
    """COCO annotation files at the top of ``root`` or of its split folders, or []."""
    bases = [root] + [p for p in children(root) if p.is_dir() and split_of(p.name)[0]]
    return [p for b in bases for p in children(b) if p.is_file() and p.suffix.lower() == ".json" and _is_coco(p)]


def _image_labels(obj: dict[str, Any]) -> tuple[dict[Any, set[str]], list[str]]:
    """Category names per image id, and problems with annotations that name unknown ids."""
    names = {c.get("id"): str(c.get("name")) for c in obj.get("categories") or [] if isinstance(c, dict)}
    image_ids = {i.get("id") for i in obj["images"] if isinstance(i, dict)}
    per_image: dict[Any, set[str]] = defaultdict(set)
    problems = []
    entries = [(a.get("image_id"), a.get("category_id"), f"annotation {a.get('id')}")
               for a in obj.get("annotations") or [] if isinstance(a, dict)]  # fmt: skip
    entries += [(i.get("id"), i["category_id"], f"image {i.get('id')}")
                for i in obj["images"] if isinstance(i, dict) and i.get("category_id") is not None]  # fmt: skip
    for image_id, category_id, what in entries:
        if image_id not in image_ids:
            problems.append(f"{what} refers to image id {image_id!r}, which is not in 'images'")
        elif category_id not in names:
            problems.append(f"{what} has category id {category_id!r}, which is not in 'categories'")
        else:
            per_image[image_id].add(names[category_id])
    return per_image, problems


def _plan_one(root: Path, coco_json: Path, listed: set[Path]) -> list[PlannedFile]:
    base = coco_json.parent
    where = coco_json.relative_to(root).as_posix()
    is_split, split = split_of(base.name) if base != root else (False, None)
    obj = read_json(coco_json)
    per_image, problems = _image_labels(obj)
    items = [PlannedFile(where, error=f"{where}: {p}") for p in problems]
    search = [d for d in (base / "data", base / "images") if d.is_dir()] + [base]
    for entry in obj["images"]:
        name = str(entry.get("file_name", "")) if isinstance(entry, dict) else ""
        found, why = None, "no file_name"
        for folder in search if name else []:
            candidate, why = listed_file(folder, name)
            if candidate is not None and candidate.is_file():
                found = candidate
                break
            why = why or f"listed in {where} but missing"
        if found is None:
            items.append(PlannedFile(f"{where}:{name}", error=f"{where}: {why}"))
            continue
        listed.add(found)
        display = found.relative_to(root.resolve()).as_posix()
        labels = sorted(per_image.get(entry.get("id"), ()))
        if len(labels) > 1:
            names = ", ".join(labels)
            error = f"{where}: annotations of {len(labels)} categories ({names}); a cultivar label is one per image"
            items.append(PlannedFile(display, error=error))
            continue
        label = labels[0] if labels else None
        meta = {"coco_image_id": entry.get("id")}
        items.append(PlannedFile(display, found, label, split if is_split else None, meta))
    return items


def plan_coco(root: Path, confine: bool) -> tuple[list[PlannedFile], set[Path]]:
    """Plan a COCO-style tree: one item per listed image; files that no annotation file lists are rejected.

    Returns:
        The planned files and the annotation files read.
    """
    found = coco_files(root)
    if not found:
        raise ValueError(f"no COCO annotation file (a JSON with 'images' and 'annotations') in {root}")
    listed: set[Path] = set()
    items = [item for coco_json in found for item in _plan_one(root, coco_json, listed)]
    consumed = {f.resolve() for f in found}
    for file in walk(root):
        if file.resolve() not in listed and file.resolve() not in consumed:
            items.append(PlannedFile(file.relative_to(root).as_posix(), error="not listed in any COCO annotation file"))
    return items, set(found)
