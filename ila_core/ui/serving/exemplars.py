"""Exemplars for :class:`~ila_core.ui.serving.ModelRuntime`: nearest confirmed images in frozen-feature space."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...store import LabelStore
from .results import Exemplar

__all__ = ["ExemplarsMixin"]

_logger = logging.getLogger(__name__)

_EMBED_CACHE = 20_000
_EXEMPLARS_PER_CULTIVAR = 24  # candidates' confirmed images embedded per request, at most


class ExemplarsMixin:
    """Embedding and exemplar methods of :class:`~ila_core.ui.serving.ModelRuntime`, which owns this state."""

    data_dir: Path
    db_path: Path
    predictor: Any
    _served: Callable[[], Any]
    _embed_lock: threading.Lock
    _embeddings: OrderedDict[str, np.ndarray]

    def embed(self, images: dict[str, Image.Image]) -> dict[str, np.ndarray]:
        """Frozen-backbone embeddings by key (sha256), cached; computes only the missing ones."""
        with self._embed_lock:
            missing = [k for k in images if k not in self._embeddings]
        if missing:
            feats = self.predictor.embed([images[k] for k in missing]).numpy()
            with self._embed_lock:
                for k, f in zip(missing, feats):
                    self._embeddings[k] = f
                while len(self._embeddings) > _EMBED_CACHE:
                    self._embeddings.popitem(last=False)
        with self._embed_lock:
            return {k: self._embeddings[k] for k in images if k in self._embeddings}

    def exemplars(
        self, query: Image.Image, query_key: str, cultivars: Sequence[str], *, per_cultivar: int = 2,
        exclude_image: int | None = None,
    ) -> list[Exemplar]:  # fmt: skip
        """The confirmed images of each candidate cultivar closest to ``query`` (best first per cultivar)."""
        from ...training.dataset import image_path

        self._served()
        with LabelStore.open(self.db_path, quick_check=False) as store:
            items = [i for i in store.labelled_items() if i.label in set(cultivars) and i.image_id != exclude_image]
        chosen: dict[str, list[Any]] = {}
        for item in items:
            group = chosen.setdefault(item.label, [])
            if len(group) < _EXEMPLARS_PER_CULTIVAR:
                group.append(item)
        pool = [i for group in chosen.values() for i in group]
        images = {query_key: query}
        for item in pool:
            if item.sha256 not in self._embeddings:
                try:
                    images[item.sha256] = Image.open(image_path(self.data_dir, item.rel_path)).convert("RGB")
                except OSError:
                    _logger.warning("exemplar image %d missing on disk", item.image_id)
        self.embed(images)  # fills the cache for the ones not embedded yet
        with self._embed_lock:
            feats = {k: self._embeddings[k] for k in [query_key, *(i.sha256 for i in pool)] if k in self._embeddings}
        q = feats[query_key]
        out: list[Exemplar] = []
        for cultivar in cultivars:
            scored = [
                Exemplar(i.image_id, cultivar, float(np.dot(q, feats[i.sha256])), i.rel_path)
                for i in chosen.get(cultivar, [])
                if i.sha256 in feats
            ]
            scored.sort(key=lambda e: -e.similarity)
            out.extend(scored[:per_cultivar])
        return out
