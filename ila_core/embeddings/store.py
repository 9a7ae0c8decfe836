"""Frozen-backbone embeddings on disk: fp16 rows by image sha256, one namespace per (backbone, size, view).

The backbone never changes, so the pooled features of an image under one backbone, preprocessing and view
are computed once and kept. Rows are written in shards (one safetensors file per batch, written atomically)
under ``<directory>/<namespace hash>/``, so a killed run never leaves half a row and a restart starts warm.
Reading a namespace scans only its shards' key lists; feature matrices are loaded on demand and kept in
memory up to ``max_memory_mb`` (least recently used shards are dropped first, and read again when needed).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from ..fsutil import atomic_write

__all__ = ["EmbeddingStore"]

_logger = logging.getLogger(__name__)
_COMPACT_AT = 64  # shards per namespace before they are merged into one (fewer files to open at start)


def _sha_bytes(sha256: str) -> bytes:
    if len(sha256) != 64:
        raise ValueError(f"expected a sha256 hex digest, got {sha256!r:.80}")
    return bytes.fromhex(sha256)


class _Namespace:
    """The shard files and row index of one namespace."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.index: dict[str, tuple[str, int]] = {}  # sha256 -> (shard name, row)
        self.memory_only: dict[str, torch.Tensor] = {}  # store without a folder
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            for path in sorted(directory.glob("*.safetensors")):
                self._index_shard(path)

    def _index_shard(self, path: Path) -> None:
        try:
            with safe_open(str(path), framework="pt") as f:
                keys = f.get_tensor("keys")
        except Exception as exc:  # a torn or foreign file: a miss, and removed so it is rewritten
            _logger.warning("dropping unreadable embedding shard %s: %s", path, exc)
            path.unlink(missing_ok=True)
            return
        for row, raw in enumerate(keys.numpy()):
            self.index[bytes(raw).hex()] = (path.name, row)


class EmbeddingStore:
    """fp16 embedding rows by (namespace, image sha256); thread-safe; shared by processes through the folder.

    Args:
        directory: where shards live (``<data_dir>/cache/embeddings``); None keeps everything in memory.
        max_memory_mb: bound on the feature matrices held in memory.
    """

    def __init__(self, directory: Path | None = None, *, max_memory_mb: float = 256) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.max_memory = int(max_memory_mb * 2**20)
        self._spaces: dict[str, _Namespace] = {}
        self._loaded: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()  # (namespace, shard) -> rows
        self.memory_bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def folder_name(namespace: str) -> str:
        """Stable folder name of a namespace (its text can be long and hold any character)."""
        return hashlib.sha256(namespace.encode()).hexdigest()[:24]

    def _space(self, namespace: str) -> _Namespace:
        space = self._spaces.get(namespace)
        if space is None:
            folder = self.directory / self.folder_name(namespace) if self.directory is not None else None
            space = self._spaces[namespace] = _Namespace(folder)
            if folder is not None:
                (folder / "NAMESPACE").write_text(namespace + "\n")  # for people looking at the cache
        return space

    def _shard(self, namespace: str, space: _Namespace, name: str) -> torch.Tensor | None:
        key = (namespace, name)
        rows = self._loaded.get(key)
        if rows is not None:
            self._loaded.move_to_end(key)
            return rows
        assert space.directory is not None
        try:
            with safe_open(str(space.directory / name), framework="pt") as f:
                rows = f.get_tensor("features")
        except Exception as exc:  # deleted by a compaction elsewhere, or torn: re-index and call it a miss
            _logger.info("embedding shard %s unreadable (%s); re-indexing", name, exc)
            self._spaces.pop(namespace, None)
            return None
        self._loaded[key] = rows
        self.memory_bytes += rows.numel() * rows.element_size()
        while self.memory_bytes > self.max_memory and len(self._loaded) > 1:
            _, old = self._loaded.popitem(last=False)
            self.memory_bytes -= old.numel() * old.element_size()
        return rows

    def get(self, namespace: str, sha256s: Sequence[str]) -> tuple[list[bool], torch.Tensor | None]:
        """Rows for ``sha256s``: a found-mask and an (N, F) fp16 matrix (zeros where not found; None if none)."""
        with self._lock:
            space = self._space(namespace)
            found: list[torch.Tensor | None] = []
            for sha in sha256s:
                row = space.memory_only.get(sha)
                if row is None and sha in space.index:
                    name, i = space.index[sha]
                    rows = self._shard(namespace, space, name)
                    if rows is None:
                        space = self._space(namespace)
                        hit = space.index.get(sha)
                        rows = self._shard(namespace, space, hit[0]) if hit else None
                        i = hit[1] if hit else 0
                    row = rows[i] if rows is not None else None
                found.append(row)
        mask = [r is not None for r in found]
        if not any(mask):
            return mask, None
        width = next(r for r in found if r is not None).shape[0]
        out = torch.zeros(len(found), width, dtype=torch.float16)
        for i, r in enumerate(found):
            if r is not None:
                out[i] = r
        return mask, out

    def put(self, namespace: str, sha256s: Sequence[str], rows: torch.Tensor) -> None:
        """Store ``rows`` (N, F) for ``sha256s`` as fp16, durably (one atomic shard file per call)."""
        if rows.dim() != 2 or rows.shape[0] != len(sha256s):
            raise ValueError(f"expected {len(sha256s)} rows, got a tensor of shape {tuple(rows.shape)}")
        if not len(sha256s):
            return
        rows = rows.detach().to("cpu", torch.float16).contiguous()
        keys = torch.tensor([list(_sha_bytes(s)) for s in sha256s], dtype=torch.uint8)
        with self._lock:
            space = self._space(namespace)
            if space.directory is None:
                for sha, row in zip(sha256s, rows, strict=True):
                    space.memory_only[sha] = row.clone()
                return
            name = f"shard-{uuid.uuid4().hex}.safetensors"
            self._write_shard(space.directory / name, keys, rows, namespace)
            for i, sha in enumerate(sha256s):
                space.index[sha] = (name, i)
            if len({n for n, _ in space.index.values()}) > _COMPACT_AT:
                self._compact(namespace, space)

    @staticmethod
    def _write_shard(path: Path, keys: torch.Tensor, rows: torch.Tensor, namespace: str) -> None:
        atomic_write(path, save({"keys": keys, "features": rows}, metadata={"namespace": namespace}))

    def _compact(self, namespace: str, space: _Namespace) -> None:
        """Merge every shard of a namespace into one (the new file is durable before the old ones go)."""
        shas = sorted(space.index)
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for out_row, sha in enumerate(shas):
            name, row = space.index[sha]
            by_shard.setdefault(name, []).append((out_row, row))
        merged: torch.Tensor | None = None
        for name, pairs in by_shard.items():
            rows = self._shard(namespace, space, name)
            if rows is None:
                return  # changed under us; try again on a later put
            if merged is None:
                merged = torch.zeros(len(shas), rows.shape[1], dtype=torch.float16)
            for out_row, row in pairs:
                merged[out_row] = rows[row]
        assert merged is not None and space.directory is not None
        keys = torch.tensor([list(_sha_bytes(s)) for s in shas], dtype=torch.uint8)
        name = f"shard-{uuid.uuid4().hex}.safetensors"
        self._write_shard(space.directory / name, keys, merged, namespace)
        for old in by_shard:
            (space.directory / old).unlink(missing_ok=True)
            rows = self._loaded.pop((namespace, old), None)
            if rows is not None:
                self.memory_bytes -= rows.numel() * rows.element_size()
        space.index = {sha: (name, i) for i, sha in enumerate(shas)}

    def drop(self, sha256s: Sequence[str]) -> int:
        """Remove every row of ``sha256s`` in every namespace (an image deleted for good); the number removed.

        The row index says which shards hold them; only those are rewritten without the rows (the new file is
        durable before the old one goes), so a fresh store over the same folder finds none of them.
        """
        doomed = set(sha256s)
        removed = 0
        with self._lock:
            for space in self._spaces.values():
                removed += sum(space.memory_only.pop(sha, None) is not None for sha in doomed)
            if self.directory is None or not self.directory.is_dir() or not doomed:
                return removed
            for label in sorted(self.directory.glob("*/NAMESPACE")):
                namespace = label.read_text().removesuffix("\n")
                space = self._space(namespace)
                by_shard: dict[str, set[int]] = {}
                for sha in doomed & space.index.keys():
                    name, row = space.index[sha]
                    by_shard.setdefault(name, set()).add(row)
                for name, rows in by_shard.items():
                    removed += self._rewrite_without(namespace, space, name, rows)
        return removed

    def _rewrite_without(self, namespace: str, space: _Namespace, name: str, gone: set[int]) -> int:
        """Rewrite one shard without the rows ``gone``; the index and memory follow. Rows removed."""
        assert space.directory is not None
        path = space.directory / name
        try:
            with safe_open(str(path), framework="pt") as f:
                keys, rows = f.get_tensor("keys"), f.get_tensor("features")
        except Exception as exc:  # torn, or compacted elsewhere: re-index on next use
            _logger.warning("embedding shard %s unreadable while dropping rows: %s", path, exc)
            self._spaces.pop(namespace, None)
            return 0
        keep = [i for i in range(len(keys)) if i not in gone]
        new_name = f"shard-{uuid.uuid4().hex}.safetensors"
        if keep:
            self._write_shard(space.directory / new_name, keys[keep].contiguous(), rows[keep].contiguous(), namespace)
        path.unlink(missing_ok=True)
        loaded = self._loaded.pop((namespace, name), None)
        if loaded is not None:
            self.memory_bytes -= loaded.numel() * loaded.element_size()
        position = {old: new for new, old in enumerate(keep)}
        for sha, (shard, row) in list(space.index.items()):
            if shard == name:
                if row in position:
                    space.index[sha] = (new_name, position[row])
                else:
                    del space.index[sha]
        return len(gone)

    def count(self, namespace: str) -> int:
        """How many images have a row in ``namespace``."""
        with self._lock:
            space = self._space(namespace)
            return len(space.index) + len(space.memory_only)
