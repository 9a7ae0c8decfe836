"""Exemplars and "unlike the confirmed images" for :class:`~ila_core.ui.serving.ModelRuntime`.

Both read the frozen embeddings the background embedder and the training jobs store
(:mod:`ila_core.embeddings`): one source for the probe, the nearest exemplars and the out-of-distribution
score. The confirmed-image index is rebuilt only when labels or images change.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ...embeddings import ConfirmedIndex, Embedder, EmbeddingStore, Unlikeness, build_embedder, normalise_rows
from ...store import LabelStore
from .results import Exemplar

__all__ = ["ExemplarsMixin"]

_logger = logging.getLogger(__name__)


class ExemplarsMixin:
    """Embedding, exemplar and unlikeness methods of :class:`~ila_core.ui.serving.ModelRuntime` (it owns the state)."""

    data_dir: Path
    db_path: Path
    predictor: Any
    embeddings: EmbeddingStore
    _served: Callable[[], Any]
    _embed_lock: threading.Lock
    _embedder: Embedder | None
    _index: tuple[tuple, ConfirmedIndex] | None

    def _query_embedder(self) -> Embedder:
        """An embedder for the served model's backbone (built once; frozen tensors shared with the served model)."""
        served = self._served()
        with self._embed_lock:
            if self._embedder is None or self._embedder_backbone != served.built.backbone:
                from ...training.model_setup import share_frozen_weights

                embedder = build_embedder(served.built.backbone, data_dir=self.data_dir)
                try:
                    share_frozen_weights(served.built.model, embedder.model)
                except ValueError:
                    pass  # e.g. a trained CLS token differs: keep the embedder's own copy
                self._embedder, self._embedder_backbone = embedder, served.built.backbone
            return self._embedder

    def _query_vector(self, image: Image.Image, key: str) -> torch.Tensor:
        """The normalised ``[CLS ‖ mean patch]`` row of one image: stored, or computed now and stored."""
        embedder = self._query_embedder()
        namespace = embedder.namespace(0)
        mask, rows = self.embeddings.get(namespace, [key])
        if mask[0]:
            row = rows[0:1]
        else:
            row = embedder.compute([image], 0)
            self.embeddings.put(namespace, [key], row)
        return normalise_rows(row, embedder.dim)[0]

    def confirmed_index(self) -> ConfirmedIndex:
        """Every confirmed image's embedding with its label (rebuilt when labels or images changed)."""
        embedder = self._query_embedder()
        with LabelStore.open(self.db_path, quick_check=False) as store:
            key = (embedder.namespace(0), store.last_event_id(), store.count_images())
            cached = self._index
            if cached is not None and cached[0] == key:
                return cached[1]
            items = store.labelled_items()
        from ...training.dataset import Sample, image_path
        from ...embeddings import embed_samples

        samples = [Sample(image_path(self.data_dir, i.rel_path), 0, i.sha256) for i in items]
        rows = embed_samples(samples, embedder, self.embeddings, 0)  # normally all stored by the background pass
        index = ConfirmedIndex.build([i.image_id for i in items], [i.label for i in items],
                                     [i.rel_path for i in items], rows, embedder.dim)  # fmt: skip
        self._index = (key, index)
        return index

    def exemplars(
        self, query: Image.Image, query_key: str, cultivars: Sequence[str], *, per_cultivar: int = 2,
        exclude_image: int | None = None,
    ) -> list[Exemplar]:  # fmt: skip
        """The confirmed images of each candidate cultivar closest to ``query`` (best first per cultivar)."""
        q = self._query_vector(query, query_key)
        found = self.confirmed_index().nearest(q, cultivars, per_cultivar=per_cultivar, exclude=exclude_image)
        return [Exemplar(n.image_id, n.label, n.similarity, n.rel_path) for n in found]

    def unlikeness(self, query: Image.Image, query_key: str, *, exclude_image: int | None = None) -> Unlikeness:
        """How unlike the store's confirmed images ``query`` is, calibrated on those images."""
        q = self._query_vector(query, query_key)
        return self.confirmed_index().unlikeness(q, exclude=exclude_image)

    def unlikeness_of_stored(self, rows: Sequence[dict[str, Any]]) -> dict[int, Unlikeness]:
        """Unlikeness of stored images by id, from their stored embeddings (images not embedded yet are left out)."""
        index = self.confirmed_index()
        embedder = self._query_embedder()
        mask, found = self.embeddings.get(embedder.namespace(0), [r["sha256"] for r in rows])
        kept = [r for r, hit in zip(rows, mask, strict=True) if hit]
        if found is None or not kept:
            return {}
        vectors = normalise_rows(found[torch.tensor(mask)], embedder.dim)
        ids = [int(r["id"]) for r in kept]
        best = index.best_similarities(vectors, ids)
        return {i: index.judge(float(b)) for i, b in zip(ids, best, strict=True)}
