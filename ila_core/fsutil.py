"""Durable file publishing: readers see the old file or the whole new one, never half a file."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir", "sha256_file"]


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; silently skipped where directories cannot be fsynced."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync, ``os.replace``, fsync the folder.

    The temp file (``.<name>.<random>.tmp``) is removed on any failure, including KeyboardInterrupt; a
    process killed mid-write leaves it behind for a startup sweep. ``mode`` defaults to world-readable
    because the app and a separate worker process both read what is published (mkstemp makes 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
