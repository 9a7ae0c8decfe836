""":class:`ModelRuntime`: the served ``Predictor`` for the app, with version sync and predictions.

Explanation and exemplar methods come from the mixins in ``explanations`` and ``exemplars``; the state they
use is created here, in one ``__init__``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ...embeddings import EmbeddingStore, embeddings_dir
from ...store import LabelStore
from ..errors import UserFacing
from ..options import StudioOptions
from .exemplars import ExemplarsMixin
from .explanations import ExplanationsMixin
from .results import Explained

__all__ = ["ModelRuntime"]


class ModelRuntime(ExplanationsMixin, ExemplarsMixin):
    """Predictor + explainer + exemplar index for the app (thread-safe).

    Args:
        data_dir: the app's data directory.
        db_path: the store (opened per call).
        options: top-k and thresholds.
    """

    def __init__(self, data_dir: Path, db_path: Path, options: StudioOptions) -> None:
        self.data_dir, self.db_path, self.options = Path(data_dir), Path(db_path), options
        self._predictor: Any = None
        self._init_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._explain_lock = threading.Lock()
        self._explainer: tuple[int | None, torch.nn.Module] | None = None
        self._explained: OrderedDict[tuple, Explained] = OrderedDict()
        self._embed_lock = threading.Lock()
        self.embeddings = EmbeddingStore(embeddings_dir(self.data_dir))  # the studio hands in its shared one
        self._embedder: Any = None
        self._embedder_backbone: Any = None
        self._index: Any = None
        self._compare_lock = threading.Lock()
        self._compare: Any = None  # a non-served version loaded for comparison
        self._interactive = 0  # predictions for a waiting user in flight; background scoring yields to them
        self._interactive_lock = threading.Lock()

    # -- serving state ------------------------------------------------------------------------

    @property
    def predictor(self) -> Any:
        """The training package's Predictor (created on first use)."""
        with self._init_lock:
            if self._predictor is None:
                from ...serving.predictor import Predictor

                with LabelStore.open(self.db_path, quick_check=False) as store:
                    self._predictor = Predictor.from_store(self.data_dir, store)
            return self._predictor

    def sync(self) -> bool:
        """Follow the store's active version; True if the served model changed.

        One sync at a time: the header poll and the worker's promotion callback may both notice a new
        version, and two concurrent builds of one version would only waste a core.
        """
        with self._sync_lock, LabelStore.open(self.db_path, quick_check=False) as store:
            if self._predictor is None:
                _ = self.predictor
                return self._predictor.current is not None
            return bool(self.predictor.sync(store))

    @property
    def version_id(self) -> int | None:
        """The served version's id (None before the first trained model)."""
        return self.predictor.version_id

    @property
    def class_names(self) -> list[str]:
        """Cultivars the served model knows, in head order (empty before the first model)."""
        served = self.predictor.current
        return list(served.class_names) if served is not None else []

    @property
    def problem(self) -> str | None:
        """Why the active version is not the one served, if it is not."""
        return self.predictor.problem

    def share_from(self, backbone: Any) -> torch.nn.Module | None:
        """The served model when it runs on ``backbone`` (the worker shares its frozen tensors)."""
        served = self.predictor.current
        if served is None or served.built.backbone != backbone:
            return None
        return served.built.model

    def unavailable(self) -> str:
        """Why no model answers, for the user: an unreadable model file (named), a job on its way, or none yet."""
        with LabelStore.open(self.db_path, quick_check=False) as store:
            active, job = store.active_version(), store.active_job()
        if active is not None:
            # A version is active but nothing is served: its file failed to load (corrupt, missing, mismatched).
            name = str(active.get("path") or f"version {active['id']}")
            why = (self.problem or "").rsplit(": ", 1)[-1].strip()
            detail = f" ({why})" if why and "/" not in why else ""
            return (f"The model file of version {active['id']} ({name}) is unreadable{detail}. "
                    "Retrain to build a new version (Train tab, Retrain; admins), or roll back on the Models tab.")  # fmt: skip
        if job is not None:
            return f"No trained model yet; training job {job['id']} is {job['status']} (see the Train tab)."
        return "No trained model yet. Retrain on the Train tab (admins) once some images have labels."

    def _served(self) -> Any:
        served = self.predictor.current
        if served is None:
            raise UserFacing(self.unavailable())
        return served

    # -- predictions --------------------------------------------------------------------------

    def predict(
        self, images: Sequence[Image.Image], k: int | None = None
    ) -> tuple[int | None, list[list[tuple[str, float]]]]:
        """``(version id, top-k per image)``, every answer from the same version (a user is waiting for it)."""
        self._served()
        with self._interactive_lock:
            self._interactive += 1
        try:
            return self.predictor.predict_versioned(list(images), k or self.options.top_k)
        finally:
            with self._interactive_lock:
                self._interactive -= 1

    @property
    def interactive_busy(self) -> bool:
        """True while a prediction for a waiting user runs (background scoring waits between its batches)."""
        return self._interactive > 0

    def predict_background(self, images: Sequence[Image.Image]) -> tuple[int | None, list[list[tuple[str, float]]]]:
        """Like :meth:`predict`, for background scoring: not counted as interactive; None version without a model."""
        if self.predictor.current is None:
            return None, []
        return self.predictor.predict_versioned(list(images), self.options.top_k)

    def nearest_similarities(self, rows: Sequence[dict[str, Any]]) -> dict[int, float]:
        """Nearest-confirmed similarity of stored images (``id``, ``sha256``) that have a stored embedding."""
        if self.predictor.current is None or not len(self.confirmed_index()):
            return {}  # nothing confirmed yet: unknown (NULL), filled in once there is
        return {i: u.similarity for i, u in self.unlikeness_of_stored(rows).items()}

    def predict_with(
        self, version: dict[str, Any], images: Sequence[Image.Image], k: int | None = None
    ) -> list[list[tuple[str, float]]]:
        """Top-k of any version (e.g. a candidate being compared), without serving it.

        The served version answers directly; another version is built and validated once and kept until a
        different one is asked for.
        """
        served = self.predictor.current
        if served is not None and served.version_id == version["id"]:
            return self.predictor.predict_versioned(list(images), k or self.options.top_k)[1]
        with self._compare_lock:
            if self._compare is None or self._compare.version_id != version["id"]:
                self._compare = self.predictor.load(version)
            other = self._compare
        k = min(k or self.options.top_k, len(other.class_names))
        with torch.no_grad():
            batch = torch.stack([other.transform(im.convert("RGB")) for im in images])
            probs = other.built.model(batch).float().softmax(dim=1)
        top = probs.topk(k, dim=1)
        return [
            [(other.class_names[int(i)], float(p)) for p, i in zip(row_p, row_i)]
            for row_p, row_i in zip(top.values, top.indices)
        ]
