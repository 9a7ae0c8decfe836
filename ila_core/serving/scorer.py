"""Score every stored image with the served version in the background, so each Review queue ranks all of them.

After each model switch (and after imports) a thread walks the images the served version has not scored, in id
order, in batches of ``batch_size`` through the plain forward, and stores each batch's top-k with its margin and
the image's similarity to its nearest confirmed image (``scores``, migration 0003). Interactive predictions
come first: while ``busy()`` says one is running, the thread waits between batches, so a request waits at most
for the batch in flight. Similarities of images scored before their frozen embedding existed (or scored by an
interactive request) are filled in later from the stored embeddings, which costs no model forward.

Confirmed images change as experts label, so a stored similarity would go stale: when ``generation`` (the
confirmed set's fingerprint) has changed, the similarities of every scored image are recomputed from the stored
embeddings (a matrix product per chunk of 2,048, no model forward, yielding to interactive work between chunks),
at most once per ``refresh_every_s`` (the fingerprint itself is only read that often).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..store import LabelStore
from ..training.dataset import image_path

__all__ = ["BackgroundScorer", "ScorerStatus"]

_logger = logging.getLogger(__name__)

TopK = list[tuple[str, float]]
Predict = Callable[[Sequence[Image.Image]], tuple[int | None, list[TopK]]]
Similarities = Callable[[Sequence[dict[str, Any]]], dict[int, float]]
_FILL_EVERY_S = 30.0  # unknown similarities are retried this often when nothing new was scored


@dataclass(frozen=True)
class ScorerStatus:
    """How far the served version's background scoring is."""

    version_id: int | None
    scored: int  # images this version has a score for
    total: int  # images in the store (archived ones left out)
    running: bool  # working through a backlog now

    @property
    def done(self) -> bool:
        return self.scored >= self.total


class BackgroundScorer:
    """Keeps ``scores`` complete for the served version.

    Args:
        db_path: the store (opened per pass, on the scorer's thread).
        data_dir: where images live.
        predict: top-k of a batch of images with the id of the version that answered.
        version: the served version's id (None before the first model).
        similarities: nearest-confirmed similarity by image id for store rows (``id``, ``sha256``), from stored
            embeddings; rows it cannot judge yet are left out. None: similarities are not stored.
        busy: True while interactive requests (or a training job) run; the thread waits between batches.
        generation: a fingerprint of the confirmed images (e.g. the last label event); when it changes, stored
            similarities are recomputed. None: they stay as scored.
        refresh_every_s: how often the fingerprint is read (and so the longest a stored similarity lags).
        batch_size: images per forward.
        poll_s: how often it looks for new images or a new version.
        threads: intra-op threads of the scorer's own thread (torch's setting is per thread here): 1 leaves the
            other cores to interactive requests, and on a busy machine one thread is often faster than several.
    """

    def __init__(self, db_path: Path, data_dir: Path, *, predict: Predict, version: Callable[[], int | None],
                 similarities: Similarities | None = None, busy: Callable[[], bool] | None = None,
                 batch_size: int = 32, poll_s: float = 2.0, threads: int | None = 1,
                 generation: Callable[[], Any] | None = None, refresh_every_s: float = 300.0) -> None:  # fmt: skip
        self.db_path, self.data_dir = Path(db_path), Path(data_dir)
        self.generation, self.refresh_every_s = generation, float(refresh_every_s)
        self._refreshed: dict[int, Any] = {}  # version -> the generation its stored similarities reflect
        self._checked_at = 0.0
        self.predict, self.version, self.similarities = predict, version, similarities
        self.busy = busy or (lambda: False)
        self.batch_size, self.poll_s, self.threads = int(batch_size), float(poll_s), threads
        self._status = ScorerStatus(None, 0, 0, False)
        self._after: dict[int, int] = {}  # version -> images with id <= this were tried
        self._filled_at = 0.0
        self._stop, self._wake = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None

    def status(self) -> ScorerStatus:
        """Progress for the page header (cheap: no database read)."""
        return self._status

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="ila-score", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Look again now (the served version changed, or images were added)."""
        self._wake.set()

    def _loop(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(int(self.threads))  # this thread's OpenMP team only; request threads keep theirs
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.run_once()
            except Exception:  # the app keeps serving; the next pass retries
                _logger.exception("background scoring pass failed")
                self._status = ScorerStatus(self._status.version_id, self._status.scored, self._status.total, False)
            self._wake.wait(self.poll_s)

    def _open(self, rows: Sequence[dict[str, Any]]) -> tuple[list[Image.Image], list[dict[str, Any]]]:
        images, kept = [], []
        for row in rows:
            try:
                with Image.open(image_path(self.data_dir, row["rel_path"])) as im:
                    images.append(im.convert("RGB"))
                kept.append(row)
            except (OSError, ValueError):
                _logger.warning("image %s unreadable on disk; not scored", row["id"])
        return images, kept

    def run_once(self) -> int:
        """Score every image the served version has not scored yet; returns how many were scored."""
        version = self.version()
        if version is None:
            self._status = ScorerStatus(None, 0, 0, False)
            return 0
        with LabelStore.open(self.db_path, quick_check=False) as store:
            # One indexed row says whether there is work; the counts (a scan each) only when there is.
            idle = not store.unscored_images(version, after_id=self._after.get(version, 0), limit=1)
            if not idle or self._status.version_id != version:
                total, scored = store.count_images(), store.count_scored(version)
        if idle and self._status.version_id == version:
            self._fill_similarities(version, force=False)
            self._refresh_similarities(version)
            return 0
        self._status = ScorerStatus(version, scored, total, scored < total)
        computed = 0
        try:
            while not self._stop.is_set():
                while self.busy() and not self._stop.is_set():
                    self._stop.wait(0.05)  # interactive requests first
                if self.version() != version:
                    break  # switched meanwhile: the next pass scores for the new version
                with LabelStore.open(self.db_path, quick_check=False) as store:
                    rows = store.unscored_images(version, after_id=self._after.get(version, 0), limit=self.batch_size)
                if not rows:
                    break
                images, kept = self._open(rows)
                if kept:
                    answered, topks = self.predict(images)
                    if answered != version:
                        break
                    sims = self.similarities(kept) if self.similarities is not None else {}
                    with LabelStore.open(self.db_path, quick_check=False) as store:
                        store.add_predictions(version, [(int(r["id"]), t) for r, t in zip(kept, topks, strict=True)],
                                              similarities=sims)  # fmt: skip
                        scored = store.count_scored(version)
                    computed += len(kept)
                self._after[version] = int(rows[-1]["id"])
                self._status = ScorerStatus(version, scored, max(total, scored), True)
            self._fill_similarities(version, force=computed > 0)
        finally:
            self._status = ScorerStatus(version, self._status.scored, self._status.total, False)
        if computed:
            _logger.info("background scoring: %d images scored by version %d", computed, version)
        return computed

    def _refresh_similarities(self, version: int) -> None:
        """Recompute every stored similarity of ``version`` when the confirmed set changed."""
        if self.similarities is None or self.generation is None:
            return
        if version not in self._refreshed:
            self._refreshed[version] = self.generation()  # scored against this set just now
            return
        if time.monotonic() - self._checked_at < self.refresh_every_s:
            return  # the fingerprint opens the store: read it only this often
        self._checked_at = time.monotonic()
        generation = self.generation()
        if generation != self._refreshed[version] and self._walk_similarities(version, missing_only=False):
            self._refreshed[version] = generation

    def _fill_similarities(self, version: int, *, force: bool) -> None:
        """Similarities of scored images that had no frozen embedding when they were scored."""
        if self.similarities is None or (not force and time.monotonic() - self._filled_at < _FILL_EVERY_S):
            return
        self._filled_at = time.monotonic()
        self._walk_similarities(version, missing_only=True)

    def _walk_similarities(self, version: int, *, missing_only: bool) -> bool:
        """Store similarities for the version's scored images (those still unknown, or all), 2,048 at a time,
        yielding to interactive work between chunks; True when the walk finished."""
        assert self.similarities is not None
        after = 0
        while not self._stop.is_set():
            while self.busy() and not self._stop.is_set():
                self._stop.wait(0.05)  # interactive requests first
            with LabelStore.open(self.db_path, quick_check=False) as store:
                rows = store.scored_rows(version, after_id=after, limit=2048, missing_similarity=missing_only)
            if not rows:
                return True
            sims = self.similarities(rows)
            if sims:
                with LabelStore.open(self.db_path, quick_check=False) as store:
                    store.set_similarities(version, sims)
            after = int(rows[-1]["id"])
        return False
