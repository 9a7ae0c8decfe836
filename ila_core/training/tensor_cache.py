"""A bounded two-level tensor cache: fp16 tensors by key, in memory up to a budget, on disk in a folder.

The store behind the frozen-prefix feature cache (:mod:`ila_core.training.feature_cache`); it knows keys and
tensors, not models or images.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import torch

__all__ = ["FeatureCache"]

_logger = logging.getLogger(__name__)


class FeatureCache:
    """fp16 tensors by key, in memory up to a budget and on disk in a bounded folder.

    With ``write_through`` (the default when a folder is given) every entry also goes to disk, so a later
    process (a CLI run, a worker child, the app after a restart) starts warm; otherwise the disk only takes
    what memory cannot hold. Entries that fit nowhere are dropped (and recomputed when needed). Safe to share
    between threads and processes: disk entries are safetensors files written atomically, so a killed run
    never leaves a half entry; unreadable entries count as misses and are deleted.
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        max_memory_mb: float = 512,
        max_disk_mb: float = 2048,
        write_through: bool = True,
    ) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.max_memory = int(max_memory_mb * 2**20)
        self.max_disk = int(max_disk_mb * 2**20) if self.directory is not None else 0
        self.write_through = write_through
        self._mem: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.memory_bytes = 0
        self.disk_bytes = 0
        self.hits = self.misses = self.dropped = 0
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._trim_disk()

    def _file(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / key[:2] / f"{key}.safetensors"

    def _trim_disk(self) -> None:
        """Delete leftover temp files and the oldest entries beyond the disk budget."""
        for tmp in self.directory.glob("*/*.tmp"):
            tmp.unlink(missing_ok=True)  # left by a killed write
        files = sorted(self.directory.glob("*/*.safetensors"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        while files and total > self.max_disk:
            victim = files.pop(0)
            total -= victim.stat().st_size
            victim.unlink(missing_ok=True)
        self.disk_bytes = total

    def _remember(self, key: str, t: torch.Tensor) -> bool:
        """Keep ``t`` in memory if it fits (call with the lock held)."""
        if key in self._mem:
            return True
        size = t.numel() * t.element_size()
        if self.memory_bytes + size > self.max_memory:
            return False
        self._mem[key] = t
        self.memory_bytes += size
        return True

    def get(self, key: str) -> torch.Tensor | None:
        """The stored tensor (fp16, CPU) or None."""
        with self._lock:
            t = self._mem.get(key)
            if t is not None:
                self.hits += 1
                return t
        if self.directory is not None:
            path = self._file(key)
            if path.is_file():
                from safetensors.torch import load_file

                try:
                    t = load_file(str(path))["t"]
                except Exception:  # a damaged entry is a miss, never an error
                    path.unlink(missing_ok=True)
                else:
                    with self._lock:
                        self.hits += 1
                        self._remember(key, t)
                    return t
        with self._lock:
            self.misses += 1
        return None

    def put(self, key: str, tensor: torch.Tensor) -> None:
        """Store ``tensor`` as fp16 on the CPU: memory if it fits, disk if write-through or memory is full."""
        t = tensor.detach().to("cpu", torch.float16).contiguous()
        size = t.numel() * t.element_size()
        on_disk = self.directory is not None and self._file(key).is_file()
        with self._lock:
            in_memory = self._remember(key, t)
            to_disk = (self.directory is not None and not on_disk and (self.write_through or not in_memory)
                       and self.disk_bytes + size <= self.max_disk)  # fmt: skip
            if to_disk:
                self.disk_bytes += size
            elif not (in_memory or on_disk):
                self.dropped += 1
        if to_disk:
            self._write(key, t)

    def _write(self, key: str, t: torch.Tensor) -> None:
        from safetensors.torch import save

        path = self._file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(save({"t": t}))
            os.replace(tmp, path)
        except OSError as exc:  # a full disk only loses the cache entry
            Path(tmp).unlink(missing_ok=True)
            _logger.warning("feature cache spill failed (%s); entry kept nowhere", exc)

    def capacity_bytes(self) -> int:
        """How many bytes of distinct entries the cache can hold at most (memory, disk, or both)."""
        if self.directory is None:
            return self.max_memory
        if self.write_through:  # every entry goes to disk; memory holds a copy of the first ones
            return max(self.max_memory, self.max_disk)
        return self.max_memory + self.max_disk

    def contains(self, key: str) -> bool:
        """True when ``key`` is held in memory or on disk (no load, no hit counted)."""
        with self._lock:
            if key in self._mem:
                return True
        return self.directory is not None and self._file(key).is_file()

    def clear_memory(self) -> None:
        """Drop the in-memory entries (disk entries stay)."""
        with self._lock:
            self._mem.clear()
            self.memory_bytes = 0

    def stats(self) -> dict[str, int]:
        """Hits, misses, dropped entries and bytes used."""
        return {"hits": self.hits, "misses": self.misses, "dropped": self.dropped,
                "memory_bytes": self.memory_bytes, "disk_bytes": self.disk_bytes}  # fmt: skip
