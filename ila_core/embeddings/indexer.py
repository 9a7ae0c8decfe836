"""Embed every stored image once, in the background after import, so a Retrain's probe starts at once.

A thread walks the images table by id (new images only: a watermark of the last id seen), embeds them in
small batches with the frozen backbone (labelled training images under their mirror view too), and stores the
rows (:class:`~ila_core.embeddings.EmbeddingStore`).
It yields to interactive work: while ``busy()`` says requests are being answered it waits between batches.
Its progress (``embedded`` of ``total``) is cheap to read, for the page header.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import BackboneConfig
from ..store import LabelStore
from ..training.dataset import Sample, image_path
from .embedder import Embedder, build_embedder, embed_samples
from .store import EmbeddingStore

__all__ = ["IndexerStatus", "BackgroundEmbedder"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexerStatus:
    """How far the background embedding is."""

    embedded: int  # images with a row (view 0)
    total: int  # images in the store
    running: bool  # working through a backlog now

    @property
    def done(self) -> bool:
        return self.embedded >= self.total


class BackgroundEmbedder:
    """Keeps the embedding store complete for the store's images (view 0 of the given backbone).

    Args:
        db_path: the store (opened per pass).
        data_dir: where images live.
        backbone: the backbone whose embeddings the probe and exemplars use.
        store: the embedding store shared with the worker.
        busy: True while interactive requests run; the thread waits between batches meanwhile.
    """

    def __init__(self, db_path: Path, data_dir: Path, backbone: BackboneConfig, store: EmbeddingStore, *,
                 batch_size: int = 16, poll_s: float = 2.0, busy: Callable[[], bool] | None = None,
                 resize_ratio: float = 1.34) -> None:  # fmt: skip
        self.db_path, self.data_dir, self.backbone, self.store = Path(db_path), Path(data_dir), backbone, store
        self.batch_size, self.poll_s, self.resize_ratio = batch_size, poll_s, resize_ratio
        self.busy = busy or (lambda: False)
        self._embedder: Embedder | None = None
        self._watermark = 0  # images with id <= this have a row
        self._embedded = self._total = 0
        self._running = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def status(self) -> IndexerStatus:
        """Progress for the header."""
        return IndexerStatus(self._embedded, self._total, self._running)

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="ila-embed", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        # One intra-op thread for this thread only (OpenMP's setting is per thread): it leaves a core to the
        # request threads, and on a loaded 2-core box one thread runs faster than two fighting for cores.
        torch.set_num_threads(1)
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # the app keeps serving; the next pass retries
                _logger.exception("background embedding pass failed")
            self._stop.wait(self.poll_s)

    def _missing(self, namespace: str, samples: list[Sample]) -> list[Sample]:
        mask, _ = self.store.get(namespace, [s.sha256 for s in samples])
        return [s for s, hit in zip(samples, mask, strict=True) if not hit and s.path.exists()]

    def run_once(self) -> int:
        """Embed every image added since the last pass; returns how many rows were computed."""
        with LabelStore.open(self.db_path, quick_check=False) as store:
            self._total = store.count_images()
            rows = store.images_since(self._watermark)
        if not rows:
            self._embedded = self._total
            return 0
        if self._embedder is None:
            self._embedder = build_embedder(self.backbone, data_dir=self.data_dir, resize_ratio=self.resize_ratio)
        embedder = self._embedder
        samples = [Sample(image_path(self.data_dir, r["rel_path"]), 0, r["sha256"]) for r in rows]
        # Labelled training images also get their mirror view: the probe of the next Retrain fits on both.
        train = [s for s, r in zip(samples, rows, strict=True) if r.get("label_kind") == "label"
                 and r.get("split") != "holdout"]  # fmt: skip
        work = [(view, self._missing(embedder.namespace(view), group)) for view, group in ((0, samples), (1, train))]
        base = self._total - len(work[0][1])
        self._embedded, self._running = base, any(todo for _, todo in work)
        computed = 0
        try:
            for view, todo in work:
                for start in range(0, len(todo), self.batch_size):
                    while self.busy() and not self._stop.is_set():
                        self._stop.wait(0.2)  # interactive work and training jobs first
                    if self._stop.is_set():
                        return computed
                    chunk = todo[start : start + self.batch_size]
                    embed_samples(chunk, embedder, self.store, view, batch_size=self.batch_size)
                    computed += len(chunk)
                    if view == 0:
                        self._embedded = base + min(computed, len(todo))
        finally:
            self._running = False
        self._watermark = max(int(r["id"]) for r in rows)
        self._embedded = self._total
        if computed:
            _logger.info("background embedding: %d new images embedded", computed)
        return computed
