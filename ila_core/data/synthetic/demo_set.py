"""The synthetic set on disk: an ImageFolder tree with train/holdout splits and an unlabelled pool."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from .config import SyntheticConfig
from .stream import _stream
from .traits import cultivar_names

__all__ = ["write_demo_set"]

_logger = logging.getLogger(__name__)

_POOL_STREAM = 0x9001


def write_demo_set(
    out_dir: Path, config: SyntheticConfig, *, train_per_class: int, holdout_per_class: int, pool_per_class: int
) -> Path:
    """Write an ImageFolder tree: ``{train,holdout}/<cultivar>/*.png`` plus unlabelled ``pool/*.png``.

    The splits use disjoint image indices. Pool file names do not reveal the cultivar. The tree is built
    in a temporary sibling folder and renamed into place, so an interrupted run never leaves half a set.

    Returns:
        ``out_dir``.

    Raises:
        FileExistsError: if ``out_dir`` exists and is not empty.
    """
    out_dir = Path(out_dir)
    if min(train_per_class, holdout_per_class, pool_per_class) < 0:
        raise ValueError("image counts per class must be >= 0")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; remove it or choose another folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        names = cultivar_names(config)
        for split, start, count in (("train", 0, train_per_class), ("holdout", train_per_class, holdout_per_class)):
            for index, k, image in _stream(config, count, start):
                _save(image, tmp / split / names[k] / f"{index:05d}.png")
        # the stream interleaves classes, so number pool files in a seeded random order: no label by position
        order = np.random.default_rng([config.seed, _POOL_STREAM]).permutation(pool_per_class * config.num_cultivars)
        pool = _stream(config, pool_per_class, train_per_class + holdout_per_class)
        for n, (_, _, image) in zip(order, pool, strict=True):
            _save(image, tmp / "pool" / f"pool-{n:05d}.png")
        manifest = {"config": asdict(config), "cultivars": cultivar_names(config), "train_per_class": train_per_class,
                    "holdout_per_class": holdout_per_class, "pool_per_class": pool_per_class}  # fmt: skip
        (tmp / "synthetic.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); rename cannot replace a directory on every platform
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _logger.info("wrote synthetic demo set to %s", out_dir)
    return out_dir


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
