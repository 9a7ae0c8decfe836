"""A tiny, easy labelled data set written straight into a store: for tests, benchmarks and smoke runs.

Each class is a colour with a class-specific stripe pattern plus noise, so even a random-init tiny ViT with
a trained head separates them after a few steps. Images are PNGs under ``<data_dir>/images/`` registered
with their content hash, exactly like imported images.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

from ..store import LabelStore

__all__ = ["toy_image", "write_toy_store", "add_toy_images"]

_COLOURS = ((200, 40, 40), (40, 170, 60), (50, 70, 210), (210, 190, 40), (150, 50, 180), (40, 180, 190),
            (230, 120, 30), (120, 120, 120))  # fmt: skip


def toy_image(label: int, index: int, size: int = 48, seed: int = 0) -> Image.Image:
    """An RGB image of class ``label``: its colour, horizontal stripes every ``label + 2`` rows, noise."""
    rng = np.random.default_rng([seed, label, index])
    base = np.array(_COLOURS[label % len(_COLOURS)], dtype=np.float32)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    rows = np.arange(size) % (label % 5 + 2) == 0
    img[rows] *= 0.4
    img += rng.normal(0, 18, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _store_png(data_dir: Path, image: Image.Image) -> tuple[str, str]:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data = buf.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    rel = f"images/{sha}.png"
    path = Path(data_dir) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return sha, rel


def add_toy_images(
    store: LabelStore, data_dir: Path, label: int, indices: range, *, split: str | None, size: int = 48,
    seed: int = 0, name: str | None = None,
) -> list[int]:  # fmt: skip
    """Write and label images ``indices`` of class ``label``; returns their image ids."""
    name = name or f"cultivar-{label}"
    ids = []
    for i in indices:
        image = toy_image(label, i, size, seed)
        sha, rel = _store_png(data_dir, image)
        image_id, _ = store.add_image(sha256=sha, rel_path=rel, width=size, height=size, fmt="PNG", split=split)
        store.record_label(image_id, name, client_event_id=f"toy-{seed}-{label}-{i}-{sha[:8]}")
        ids.append(image_id)
    return ids


def write_toy_store(
    data_dir: Path, *, num_classes: int = 3, train_per_class: int = 4, holdout_per_class: int = 2, size: int = 48,
    seed: int = 0, db_name: str = "ila.db",
) -> Path:  # fmt: skip
    """Create ``<data_dir>/<db_name>`` with a labelled toy set; returns the store path."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    store_path = data_dir / db_name
    with LabelStore.open(store_path) as store:
        for k in range(num_classes):
            add_toy_images(store, data_dir, k, range(train_per_class), split="train", size=size, seed=seed)
            add_toy_images(store, data_dir, k, range(train_per_class, train_per_class + holdout_per_class),
                           split="holdout", size=size, seed=seed)  # fmt: skip
    return store_path
