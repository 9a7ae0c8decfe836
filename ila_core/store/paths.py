"""Where the store lives inside a data directory."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DB_NAME", "default_store_path"]

DB_NAME = "ila.db"


def default_store_path(data_dir: Path) -> Path:
    """``<data_dir>/ila.db``."""
    return Path(data_dir) / DB_NAME
