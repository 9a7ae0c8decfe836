"""Frozen-backbone embeddings per (image, backbone, size, view), computed once and cached under ``data/cache/``.

One source for the probe, nearest exemplars, out-of-distribution scores and near-duplicate hints.
"""

from __future__ import annotations

from pathlib import Path

from .embedder import Embedder, build_embedder, cls_part, embed_samples
from .indexer import BackgroundEmbedder, IndexerStatus
from .neighbours import ConfirmedIndex, Neighbour, Unlikeness, normalise_rows
from .store import EmbeddingStore

__all__ = ["EmbeddingStore", "Embedder", "build_embedder", "embed_samples", "cls_part", "embeddings_dir",
           "BackgroundEmbedder", "IndexerStatus", "ConfirmedIndex", "Neighbour", "Unlikeness",
           "normalise_rows"]  # fmt: skip


def embeddings_dir(data_dir: Path) -> Path:
    """``<data_dir>/cache/embeddings``."""
    return Path(data_dir) / "cache" / "embeddings"
