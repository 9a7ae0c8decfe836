"""Training data from a label-store snapshot: hard-labelled images, class order, image files on disk.

A training job sees the labels as of its ``snapshot_event_id`` (CON-09): corrections made after the job
started are not in its training set. Images labelled 'train' or not assigned to a split train; images in
the 'holdout' split are evaluated. Classes are the cultivars with at least one training image, in the
store's creation order, so class indices stay stable between retrains.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..store import LabelStore

__all__ = ["Sample", "TrainingSet", "image_path", "snapshot", "ImageDataset", "open_rgb"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One labelled image file."""

    path: Path
    label: int  # index into TrainingSet.class_names
    sha256: str  # content hash: the feature cache's key


@dataclass(frozen=True)
class TrainingSet:
    """What one training run sees."""

    class_names: list[str]
    train: list[Sample]
    holdout: list[Sample]
    snapshot_event_id: int | None = None
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count (missing file, unseen class)

    def __post_init__(self) -> None:
        if not self.class_names:
            raise ValueError("no labelled training images: label some images (split 'train' or unassigned) first")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError("class names must be unique")


def image_path(data_dir: Path, rel_path: str) -> Path:
    """Where a stored image lives: ``<data_dir>/images/<rel_path>`` (a rel_path already under images/ is kept)."""
    rel = Path(rel_path)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"stored image path must be relative and inside the data directory: {rel_path!r}")
    if rel.parts and rel.parts[0] == "images":
        return Path(data_dir) / rel
    return Path(data_dir) / "images" / rel


def snapshot(store: LabelStore, data_dir: Path, *, max_event_id: int | None = None) -> TrainingSet:
    """The training set as of label event ``max_event_id`` (default: now).

    Images whose file is missing, and holdout images of a cultivar with no training image, are left out and
    counted in ``skipped`` (logged), rather than failing the run.
    """
    items = store.labelled_items(max_event_id=max_event_id)
    train_items = [it for it in items if it.split != "holdout"]
    hold_items = [it for it in items if it.split == "holdout"]
    present = {it.label for it in train_items}
    class_names = [name for name in store.cultivars() if name in present]
    index = {name: i for i, name in enumerate(class_names)}
    skipped: dict[str, int] = {}

    def samples(chosen: Sequence) -> list[Sample]:
        out = []
        for it in chosen:
            if it.label not in index:
                skipped["holdout class without training images"] = skipped.get("holdout class without training images", 0) + 1
                continue
            path = image_path(data_dir, it.rel_path)
            if not path.is_file():
                skipped["image file missing"] = skipped.get("image file missing", 0) + 1
                _logger.warning("image %s (id %d) is missing; left out of training", path, it.image_id)
                continue
            out.append(Sample(path=path, label=index[it.label], sha256=it.sha256))
        return out

    if not class_names:
        raise ValueError("no labelled training images: label some images (split 'train' or unassigned) first")
    result = TrainingSet(class_names, samples(train_items), samples(hold_items), max_event_id, skipped)
    if skipped:
        _logger.warning("training set: left out %s", skipped)
    return result


def open_rgb(path: Path) -> Image.Image:
    """Decode a stored image file as RGB."""
    # Stored images passed ila_core.images.load_image on the way in; here we only decode them.
    with Image.open(path) as im:
        return im.convert("RGB")


class ImageDataset(Dataset):
    """``(transformed image tensor, label)`` pairs for a list of samples."""

    def __init__(self, samples: Sequence[Sample], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        s = self.samples[i]
        return self.transform(open_rgb(s.path)), s.label
