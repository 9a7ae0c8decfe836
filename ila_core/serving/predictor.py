"""Serving: the active model version answers top-k predictions while versions switch.

Switching never loads weights into the model that is serving (RELIABILITY fact 8): :meth:`Predictor.activate`
builds a new model from the checkpoint, validates it (files, hash, backbone, keys, shapes, finite values, and
a canary batch that must give finite logits), and only then replaces one reference under a lock. A request
reads that reference once and keeps the object it started with, so every answer comes entirely from one
version (CON-06, CON-07). The previous version is kept for an instant in-memory rollback.

At start-up (:meth:`Predictor.from_store`) a corrupt active checkpoint does not take serving down: the error
is logged and the newest previously active version that validates is served instead (FLT-13);
:attr:`Predictor.problem` says what happened, for the UI.

Wiring in the app (the worker trains in a thread and shares the served model's frozen backbone tensors)::

    with LabelStore.open(store_path) as store:
        predictor = Predictor.from_store(data_dir, store)
    worker = Worker(data_dir, share_from=predictor.backbone_source,
                    on_promoted=lambda _version: predictor.follow(store_path))
    worker.start()
    answers = predictor.predict([pil_image], k=5)  # [[("Amber-01", 0.82), ...]]
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from ..adapters import fuse_for_inference
from ..backbone import BuiltModel
from ..checkpoint import CheckpointError, load_built
from ..config import BackboneConfig
from ..store import LabelStore
from ..training.transforms import eval_transform, preprocess_for
from .paths import checkpoint_path

__all__ = ["NoActiveModel", "ServedModel", "Predictor"]

_logger = logging.getLogger(__name__)


class NoActiveModel(RuntimeError):
    """No model version is being served yet (train one first)."""


@dataclass(frozen=True)
class ServedModel:
    """One validated, immutable model version ready to answer requests."""

    built: BuiltModel
    version_id: int | None
    class_names: list[str]
    transform: Callable[[Image.Image], torch.Tensor]
    manifest: dict[str, Any]


class Predictor:
    """Holds the served model version; thread-safe.

    Args:
        data_dir: where checkpoints (and the default backbone weights) live.
        device: where models run.
        canary: a few images every new version must answer with finite logits before it is swapped in.
    """

    def __init__(self, data_dir: Path, *, device: str = "cpu", canary: Sequence[Image.Image] = ()) -> None:
        self.data_dir = Path(data_dir)
        self.device = device
        self.canary = list(canary)
        self._lock = threading.Lock()
        self._current: ServedModel | None = None
        self._previous: ServedModel | None = None
        self.problem: str | None = None  # last loading problem, for the UI

    # state

    @property
    def current(self) -> ServedModel | None:
        """The version answering requests now (None before the first activation)."""
        return self._current

    @property
    def previous(self) -> ServedModel | None:
        """The version served before the last switch (kept for rollback)."""
        return self._previous

    @property
    def version_id(self) -> int | None:
        """Id of the served version."""
        served = self._current
        return served.version_id if served else None

    # loading and switching

    def load(self, version: Mapping[str, Any]) -> ServedModel:
        """Build and validate a NEW model for a ``model_versions`` row (nothing is swapped).

        Raises:
            CheckpointError: the checkpoint or its fit to the backbone is bad, or the canary gives non-finite logits.
        """
        path = checkpoint_path(self.data_dir, version)
        built, manifest = load_built(path, self.data_dir, device=self.device)
        if version.get("sha256") and manifest["tensors"]["sha256"] != version["sha256"]:
            raise CheckpointError(f"{path}: file hash differs from the hash recorded for version {version.get('id')}")
        fuse_for_inference(built.model)  # serving never trains this model: fold the adapters' BatchNorms
        ratio = float((manifest.get("train_config") or {}).get("resize_ratio", 1.34))
        transform = eval_transform(preprocess_for(built.model, built.backbone.image_size, ratio))
        served = ServedModel(built, version.get("id"), list(manifest["class_names"]), transform, manifest)
        if self.canary:
            logits = self._logits(served, self.canary)
            if logits.shape[1] != len(served.class_names) or not bool(torch.isfinite(logits).all()):
                raise CheckpointError(f"{path}: canary batch gave non-finite or misshapen logits")
        return served

    def swap(self, served: ServedModel) -> None:
        """Serve ``served`` from now on; the current one becomes :attr:`previous`."""
        with self._lock:
            self._previous, self._current = self._current, served
        _logger.info("serving model version %s", served.version_id)

    def activate(self, version: Mapping[str, Any]) -> ServedModel:
        """Load, validate, then swap to ``version``; on error the served model is unchanged."""
        served = self.load(version)
        self.swap(served)
        self.problem = None
        return served

    def rollback(self) -> ServedModel:
        """Swap back to the previous in-memory version (instant; the store is not touched).

        Raises:
            NoActiveModel: there is no previous version in memory.
        """
        with self._lock:
            if self._previous is None:
                raise NoActiveModel("no previous model version in memory")
            self._previous, self._current = self._current, self._previous
            return self._current

    def sync(self, store: LabelStore) -> bool:
        """Follow the store's active version (after a promote/rollback elsewhere); True if the model changed.

        A version that fails validation is not served; the error is logged and kept in :attr:`problem`.
        """
        active = store.active_version()
        if active is None or active["id"] == self.version_id:
            return False
        if self._previous is not None and self._previous.version_id == active["id"]:
            self.rollback()
            return True
        try:
            self.activate(active)
        except (CheckpointError, OSError) as exc:
            self.problem = f"version {active['id']} not served: {exc}"
            _logger.error("%s", self.problem)
            return False
        return True

    def follow(self, store_path: Path) -> bool:
        """:meth:`sync` through a connection of its own (e.g. as the worker's ``on_promoted`` callback)."""
        with LabelStore.open(store_path, quick_check=False) as store:
            return self.sync(store)

    def backbone_source(self, backbone: BackboneConfig) -> torch.nn.Module | None:
        """The served model if it runs ``backbone`` (a thread worker may share its frozen tensors), else None."""
        served = self._current
        if served is None or served.built.backbone != backbone:
            return None
        return served.built.model

    @classmethod
    def from_store(cls, data_dir: Path, store: LabelStore, **kwargs: Any) -> Predictor:
        """A predictor serving the store's active version, or the last good one if that fails to load (FLT-13)."""
        predictor = cls(data_dir, **kwargs)
        active = store.active_version()
        if active is None:
            return predictor
        tried = [active["id"]]
        for event in reversed(store.version_history()):
            for vid in (event["version_id"], event["previous_version_id"]):
                if vid is not None and vid not in tried:
                    tried.append(vid)
        errors = []
        for vid in tried:
            try:
                predictor.activate(store.model_version(vid))
            except (CheckpointError, OSError) as exc:
                errors.append(f"version {vid}: {exc}")
                _logger.error("cannot serve model version %s: %s", vid, exc)
                continue
            if vid != active["id"]:
                predictor.problem = f"active version {active['id']} failed to load; serving version {vid}. {errors[0]}"
                _logger.error("%s", predictor.problem)
            return predictor
        predictor.problem = "no model version could be loaded: " + "; ".join(errors)
        return predictor

    # answering

    def _require(self) -> ServedModel:
        served = self._current  # read the reference once: this request uses this version throughout
        if served is None:
            raise NoActiveModel("no trained model yet: label some images and train one")
        return served

    @torch.no_grad()
    def _logits(self, served: ServedModel, images: Sequence[Image.Image]) -> torch.Tensor:
        batch = torch.stack([served.transform(im.convert("RGB")) for im in images]).to(self.device)
        return served.built.model(batch).float()

    def predict(self, images: Sequence[Image.Image], k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(cultivar, probability)`` per image, best first, all from one model version.

        Raises:
            NoActiveModel: nothing is served yet.
        """
        return self.predict_versioned(images, k)[1]

    def predict_versioned(
        self, images: Sequence[Image.Image], k: int = 5
    ) -> tuple[int | None, list[list[tuple[str, float]]]]:
        """Like :meth:`predict`, also returning the id of the version that answered (for storing predictions)."""
        served = self._require()
        if not images:
            return served.version_id, []
        probs = self._logits(served, images).softmax(dim=1)
        top = probs.topk(min(k, probs.shape[1]), dim=1)
        answers = [
            [(served.class_names[int(i)], float(p)) for p, i in zip(row_p, row_i)]
            for row_p, row_i in zip(top.values, top.indices)
        ]
        return served.version_id, answers
