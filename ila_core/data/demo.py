"""Seed a data directory with the synthetic demo set on first start (labelled train/holdout + unlabelled pool)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .importers import import_path, summarise
from .synthetic import SyntheticConfig, write_demo_set

__all__ = ["seed_demo_set", "needs_seeding"]

_logger = logging.getLogger(__name__)


def needs_seeding(data_dir: Path) -> bool:
    """True when the data directory has no images yet (a fresh install)."""
    from ..store import LabelStore

    db = Path(data_dir) / "ila.db"
    if not db.exists():
        return True
    with LabelStore.open(db, quick_check=False) as store:
        return store.count_images() == 0


def seed_demo_set(
    data_dir: Path,
    config: SyntheticConfig = SyntheticConfig(),
    *,
    train_per_class: int = 16,
    holdout_per_class: int = 6,
    pool_per_class: int = 4,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Render the synthetic cultivars and import them through the normal importer.

    Train and holdout images arrive labelled (source 'import'); pool images arrive unlabelled, for the
    Classify and Review screens. Returns the importer's summary.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".demo-", dir=data_dir))
    try:
        tree = write_demo_set(
            work / "demo",
            config,
            train_per_class=train_per_class,
            holdout_per_class=holdout_per_class,
            pool_per_class=pool_per_class,
        )
        pool = sorted((tree / "pool").glob("*.png"))
        for name in ("pool", "synthetic.json"):  # the pool imports unlabelled; the manifest is not an image
            if (tree / name).exists():
                shutil.move(str(tree / name), str(work / name))
        results = list(import_path(tree, data_dir, fmt="imagefolder", user="demo", on_progress=on_progress))
        for file in pool:  # single images import unlabelled
            results.extend(import_path(work / "pool" / file.name, data_dir, fmt="auto", user="demo", quick_check=False))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = summarise(results)
    _logger.info("seeded demo set: %s", summary)
    return summary
