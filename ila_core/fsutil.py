"""Durable file publishing: readers see the old file or the whole new one, never half a file."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import os
import sys
import tempfile
from pathlib import Path

__all__ = ["DurableFiles", "atomic_write", "fsync_dir", "sha256_file"]

_logger = logging.getLogger(__name__)

_SYNCFS_FROM = 8  # files per batch from which one syncfs(2) beats an fsync of each file and folder


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


class DurableFiles:
    """Files published now (temp file, ``os.replace``) and made durable together by :meth:`sync`.

    A batch of small files costs one flush instead of two fsyncs each: on Linux ``syncfs(2)`` of the filesystem
    (which, unlike POSIX ``sync``, waits for the writes and reports their errors), for a few files or elsewhere an
    fsync of each file and then of each folder once. Until :meth:`sync` returns, a crash may leave a new file empty or short, so
    callers record a file (a database row) only after it, and rewrite an existing file that no row names (the
    importer does: content-addressed names make the next import of the same bytes replace it whole).
    """

    def __init__(self) -> None:
        self._paths: list[Path] = []
        self._folders: set[Path] = set()  # folders known to exist (a mkdir per file costs as much as the write)

    def __len__(self) -> int:
        return len(self._paths)

    def write(self, path: Path, data: bytes, *, mode: int = 0o644) -> None:
        """Publish ``data`` at ``path``; durable after :meth:`sync`.

        A new name is written in place (``O_EXCL``: one directory operation instead of two); an existing one is
        replaced through a temp file and ``os.replace``, so a reader of the old file never sees half a new one.
        """
        path = Path(path)
        if path.parent not in self._folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(path.parent)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            fd = -1
        if fd >= 0:
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
        else:
            tmp_fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                os.fchmod(tmp_fd, mode)
                with os.fdopen(tmp_fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        self._paths.append(path)

    def sync(self) -> None:
        """Make every file written since the last call durable, with the renames that published them.

        Raises:
            OSError: the flush failed (e.g. an I/O error); treat every file of the batch as not written.
        """
        paths, self._paths = self._paths, []
        if not paths:
            return
        folders = list(dict.fromkeys(p.parent for p in paths))
        # A few files: their own fsyncs are cheaper than flushing whatever else the filesystem holds dirty.
        one_device = all(f.stat().st_dev == folders[0].stat().st_dev for f in folders)
        if len(paths) >= _SYNCFS_FROM and one_device and _syncfs(folders[0]):
            return
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for folder in folders:
            fsync_dir(folder)


def _syncfs(folder: Path) -> bool:
    """``syncfs(2)`` of the filesystem holding ``folder``; False where the call is not available."""
    libc = _libc()
    if libc is None:
        return False
    fd = os.open(folder, os.O_RDONLY)
    try:
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(folder))
    finally:
        os.close(fd)
    return True


_LIBC: list[ctypes.CDLL | None] = []


def _libc() -> ctypes.CDLL | None:
    if not _LIBC:
        lib = None
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
                lib.syncfs.argtypes, lib.syncfs.restype = [ctypes.c_int], ctypes.c_int
            except (OSError, AttributeError):
                _logger.info("syncfs is not available; durable batches fsync each file")
                lib = None
        _LIBC.append(lib)
    return _LIBC[0]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
