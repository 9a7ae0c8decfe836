"""Archive and file-publishing safety for imports: zip extraction with caps, atomic writes.

A zip is checked as a whole first (entry count, total expanded size) and refused before anything is
written; then each entry is checked (absolute or ``..`` names, links, encryption, size, compression
ratio) and extracted with a counter on the bytes that actually come out of the decompressor.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import stat
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..fsutil import atomic_write
from .tree import is_hidden

__all__ = ["ZipLimits", "ArchiveRefused", "extract_zip", "write_atomic", "sweep_stale"]


_logger = logging.getLogger(__name__)


class ArchiveRefused(ValueError):
    """The archive as a whole breaks a cap or is unreadable; nothing was extracted."""


@dataclass(frozen=True)
class ZipLimits:
    """Caps for extracting an uploaded archive (a zip bomb is refused before anything is written)."""

    max_entries: int = 200_000
    max_total_bytes: int = 8_000_000_000  # sum of uncompressed sizes
    max_entry_bytes: int = 50_000_000  # any one file (images are capped again by ImageLimits)
    max_ratio: float = 200.0  # uncompressed / compressed size of one entry

    def __post_init__(self) -> None:
        for name in ("max_entries", "max_total_bytes", "max_entry_bytes", "max_ratio"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")


def extract_zip(archive: Path, dest: Path, limits: ZipLimits) -> list[tuple[str, str]]:
    """Extract safe entries of ``archive`` into ``dest``; returns (name, reason) for refused entries.

    Raises:
        ArchiveRefused: the archive as a whole breaks a cap; nothing is extracted.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveRefused(f"corrupt zip file: {exc}") from exc
    refused: list[tuple[str, str]] = []
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_entries:
            raise ArchiveRefused(f"zip has {len(infos)} entries > limit {limits.max_entries}")
        total = sum(i.file_size for i in infos)
        if total > limits.max_total_bytes:
            raise ArchiveRefused(f"zip expands to {total / 1e6:.0f} MB > limit {limits.max_total_bytes / 1e6:.0f} MB")
        for info in infos:
            name = info.filename
            why = _unsafe_entry(info, limits)
            if why == "skip":
                continue
            if why is not None:
                refused.append((name, why))
                continue
            target = dest.joinpath(*PurePosixPath(name).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                _copy_capped(zf, info, target, limits.max_entry_bytes)
            except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
                target.unlink(missing_ok=True)
                refused.append((name, f"unreadable zip entry: {exc}"))
    return refused


def _unsafe_entry(info: zipfile.ZipInfo, limits: ZipLimits) -> str | None:
    name = info.filename
    parts = PurePosixPath(name).parts
    if "\\" in name or name.startswith("/") or re.match(r"[A-Za-z]:", name) or ".." in parts or "\x00" in name:
        return "unsafe path in zip (absolute or '..')"
    if info.is_dir() or any(is_hidden(p) for p in parts):
        return "skip"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "links are not extracted from zips"
    if info.flag_bits & 0x1:
        return "encrypted zip entry"
    if info.file_size > limits.max_entry_bytes:
        return f"zip entry too large: {info.file_size / 1e6:.1f} MB > limit {limits.max_entry_bytes / 1e6:g} MB"
    if info.file_size > 1_000_000 and info.file_size > limits.max_ratio * max(info.compress_size, 1):
        return "suspicious compression ratio (zip bomb?)"
    return None


def _copy_capped(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, cap: int) -> None:
    # The declared size can lie; count what actually comes out of the decompressor.
    written = 0
    with zf.open(info) as src, target.open("xb") as dst:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > min(cap, info.file_size):
                raise ValueError("entry expands beyond its declared size")
            dst.write(chunk)


def write_atomic(path: Path, data: bytes) -> None:
    """Publish ``data`` at ``path`` whole or not at all (see :func:`ila_core.fsutil.atomic_write`)."""
    atomic_write(path, data)


def sweep_stale(data_dir: Path, *, older_than_s: float = 3600.0) -> int:
    """Remove what a killed import left behind: ``images/**/.*.tmp`` files and ``cache/import-*`` folders.

    Only entries older than ``older_than_s`` are removed, so an import running right now keeps its files.

    Returns:
        The number of files and folders removed.
    """
    cutoff = time.time() - older_than_s
    stale = [p for p in (Path(data_dir) / "images").rglob(".*.tmp") if p.is_file()]
    stale += [p for p in (Path(data_dir) / "cache").glob("import-*") if p.is_dir()]
    removed = 0
    for path in stale:
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
                removed += 1
    if removed:
        _logger.info("removed %d stale import leftovers under %s", removed, data_dir)
    return removed
