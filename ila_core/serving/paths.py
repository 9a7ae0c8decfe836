"""Where model versions live in a data directory."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["ADAPTERS_DIR", "adapters_dir", "checkpoint_path"]

ADAPTERS_DIR = "adapters"


def adapters_dir(data_dir: Path) -> Path:
    """Where checkpoints live: ``<data_dir>/adapters``."""
    return Path(data_dir) / ADAPTERS_DIR


def checkpoint_path(data_dir: Path, version: Mapping[str, Any]) -> Path:
    """Absolute checkpoint path of a ``model_versions`` row (its path is relative to the data directory)."""
    return Path(data_dir) / version["path"]
