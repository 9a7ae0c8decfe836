"""The UFG benchmark releases (Cotton80, SoyLocal, SoyGlobal, SoyGene, SoyAgeing), as their authors ship them.

* flat folders of ``<class>_<index>_<train|test>.<ext>`` (Cotton80, SoyLocal, SoyGlobal);
* ``images/`` + ``anno/{train,test}.txt`` with lines ``<file> <class>`` (SoyGene);
* SoyAgeing's ``R1 R3 R4 R5 R6`` folders of the latter (the stage goes to ``metadata["growth_stage"]``).

The 1-based class id becomes the cultivar ``cultivar_0001`` (four digits: the largest set has 1,938 classes);
UFG ``test`` becomes ``holdout``.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..tree import PlannedFile, children, walk

__all__ = ["ufg_label", "is_ufg_flat", "is_anno_root", "stage_dirs", "is_stage_name", "plan_ufg_flat",
           "plan_ufg_anno", "plan_ufg_ageing"]  # fmt: skip

_UFG_FLAT = re.compile(r"(\d+)_(\d+)_(train|test)\.[A-Za-z0-9]+", re.IGNORECASE)
_STAGE = re.compile(r"R\d+")


def ufg_label(class_id: int) -> str:
    """Cultivar name for a 1-based UFG class id: ``ufg_label(7) == "cultivar_0007"``."""
    if class_id < 1:
        raise ValueError(f"UFG class ids are 1-based, got {class_id}")
    return f"cultivar_{class_id:04d}"


def is_stage_name(name: str) -> bool:
    """True for SoyAgeing's growth-stage folder names (``R1``, ``R6``)."""
    return _STAGE.fullmatch(name) is not None


def is_ufg_flat(entries: list[Path]) -> bool:
    """True when every entry is a file named ``<class>_<index>_<train|test>.<ext>``."""
    files = [p for p in entries if p.is_file()]
    return bool(files) and len(files) == len(entries) and all(_UFG_FLAT.fullmatch(p.name) for p in files)


def is_anno_root(root: Path) -> bool:
    """True for SoyGene's ``images/`` + ``anno/{train,test}.txt``."""
    anno = root / "anno"
    return (root / "images").is_dir() and ((anno / "train.txt").is_file() or (anno / "test.txt").is_file())


def stage_dirs(root: Path) -> list[Path]:
    """SoyAgeing's stage folders under ``root`` (each an annotation root)."""
    return [p for p in children(root) if p.is_dir() and is_stage_name(p.name) and is_anno_root(p)]


def plan_ufg_flat(root: Path, confine: bool) -> tuple[list[PlannedFile], set[Path]]:
    """One item per file; names that do not follow the pattern are rejected."""
    items = []
    for file in walk(root):
        match = _UFG_FLAT.fullmatch(file.name)
        if match is None:
            items.append(PlannedFile(file.name, error="name is not <class>_<index>_<train|test>"))
            continue
        class_id, split = int(match.group(1)), "train" if match.group(3).lower() == "train" else "holdout"
        if class_id < 1:
            items.append(PlannedFile(file.name, error="UFG class ids are 1-based"))
            continue
        items.append(PlannedFile(file.name, file, ufg_label(class_id), split, {"ufg_class": class_id}))
    return items, set()


def plan_ufg_anno(root: Path, confine: bool, stage: str | None = None) -> tuple[list[PlannedFile], set[Path]]:
    """Files listed in ``anno/*.txt`` get their class; unlisted and missing files are rejected."""
    images, prefix = root / "images", f"{stage}/" if stage else ""
    meta = {"growth_stage": stage} if stage else {}
    items, listed, read = [], set(), set()
    for split_file, split in (("train.txt", "train"), ("test.txt", "holdout")):
        anno = root / "anno" / split_file
        if not anno.is_file():
            continue
        read.add(anno)
        where = f"{prefix}anno/{split_file}"
        for line_no, line in enumerate(anno.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.strip().rsplit(None, 1)
            name, cls = (fields[0], fields[1]) if len(fields) == 2 else ("", "")
            if not cls.isdigit() or int(cls) < 1:
                items.append(PlannedFile(where, error="expected '<file> <class 1-based>'", line=line_no))
                continue
            file = (images / name).resolve()
            if not file.is_relative_to(images.resolve()):
                items.append(PlannedFile(where, error="path must stay inside images/", line=line_no))
                continue
            listed.add(file)
            display = f"{prefix}images/{name}"
            if not file.is_file():
                items.append(PlannedFile(display, error=f"listed in {where} but missing", line=line_no))
                continue
            metadata = {**meta, "ufg_class": int(cls)}
            items.append(PlannedFile(display, file, ufg_label(int(cls)), split, metadata, line=line_no))
    for file in walk(images):
        if file.resolve() not in listed:
            display = f"{prefix}images/{file.relative_to(images).as_posix()}"
            items.append(PlannedFile(display, error="not listed in anno/train.txt or anno/test.txt"))
    return items, read


def plan_ufg_ageing(root: Path, confine: bool) -> tuple[list[PlannedFile], set[Path]]:
    """Every stage folder as an annotation root, the stage kept as ``growth_stage``."""
    items, read = [], set()
    for stage_dir in stage_dirs(root):
        stage_items, stage_read = plan_ufg_anno(stage_dir, confine, stage_dir.name)
        items += stage_items
        read |= stage_read
    return items, read
