"""Frozen-backbone embeddings per (image, backbone, size, view), computed once and cached under ``data/cache/``.

One source for the probe, the LP-FT head initialisation's reference, nearest exemplars, out-of-distribution
scores and near-duplicate hints.
"""

from __future__ import annotations

from .embedder import Embedder, build_embedder, cls_part, embed_samples
from .store import EmbeddingStore

__all__ = ["EmbeddingStore", "Embedder", "build_embedder", "embed_samples", "cls_part", "embeddings_dir"]


def embeddings_dir(data_dir):  # noqa: ANN001, ANN201 - tiny path helper
    """``<data_dir>/cache/embeddings``."""
    from pathlib import Path

    return Path(data_dir) / "cache" / "embeddings"
