"""The app's side of serving: predictions, explanations and exemplar retrieval around one ``Predictor``.

:class:`~ila_core.training.predictor.Predictor` owns the served model and swaps versions by replacing one
reference. Explanations edit a model temporarily (hooks, a swapped last block), so they run on a separate
instance of the served version, rebuilt from its checkpoint and sharing the frozen tensors, one at a time
behind a lock. Exemplars ("nearest confirmed images of each candidate") come from the predictor's frozen
backbone embeddings, which do not change between adapter versions, so they are cached by image hash.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..store import LabelStore
from .errors import UserFacing
from .options import StudioOptions

__all__ = ["METHODS", "Exemplar", "Explained", "ModelRuntime"]

_logger = logging.getLogger(__name__)

METHODS = {"gradcam": "Grad-CAM", "rollout": "Attention rollout", "contrast": "Contrast vs runner-up"}
_EXPLAIN_CACHE = 64
_EMBED_CACHE = 20_000
_EXEMPLARS_PER_CULTIVAR = 24  # candidates' confirmed images embedded per request, at most


@dataclass(frozen=True)
class Explained:
    """An explanation ready for display."""

    view: Image.Image  # what the model saw: square resize + centre crop, no normalisation
    overlay: Image.Image  # heatmap blended on the view
    method: str
    target: str | None  # cultivar explained (None for class-agnostic rollout)
    other: str | None  # contrast only
    outside_leaf: float  # share of attribution mass outside the leaf mask
    grid_side: int


@dataclass(frozen=True)
class Exemplar:
    """A confirmed image close to the query in the frozen feature space."""

    image_id: int
    cultivar: str
    similarity: float
    rel_path: str


class ModelRuntime:
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
        self._embeddings: OrderedDict[str, np.ndarray] = OrderedDict()
        self._compare_lock = threading.Lock()
        self._compare: Any = None  # a non-served version loaded for comparison

    # -- serving state ------------------------------------------------------------------------

    @property
    def predictor(self) -> Any:
        """The training package's Predictor (created on first use)."""
        with self._init_lock:
            if self._predictor is None:
                from ..training.predictor import Predictor

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

    def _served(self) -> Any:
        served = self.predictor.current
        if served is None:
            raise UserFacing("No trained model yet. The first training job is running or queued; see the Train tab.")
        return served

    # -- predictions --------------------------------------------------------------------------

    def predict(
        self, images: Sequence[Image.Image], k: int | None = None
    ) -> tuple[int | None, list[list[tuple[str, float]]]]:
        """``(version id, top-k per image)``, every answer from the same version."""
        self._served()
        return self.predictor.predict_versioned(list(images), k or self.options.top_k)

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

    # -- explanations -------------------------------------------------------------------------

    def model_view(self, image: Image.Image) -> Image.Image:
        """The image as the served model sees it (square resize to the recipe's size, centre crop)."""
        from ..training.transforms import preprocess_for

        served = self._served()
        ratio = float((served.manifest.get("train_config") or {}).get("resize_ratio", 1.34))
        p = preprocess_for(served.built.model, served.built.backbone.image_size, ratio)
        square = image.convert("RGB").resize((p.resize, p.resize), Image.Resampling.BICUBIC)
        off = (p.resize - p.image_size) // 2
        return square.crop((off, off, off + p.image_size, off + p.image_size))

    def explain(
        self, image: Image.Image, *, key: str, method: str, target: str | None = None, other: str | None = None
    ) -> Explained:
        """Heatmap of ``method`` for ``target`` (default top-1), contrasted with ``other`` (default runner-up).

        Args:
            image: the stored image.
            key: a cache key for the image (its sha256).
            method: "gradcam", "rollout" or "contrast".
            target: cultivar to explain.
            other: contrast only, the cultivar to contrast with.
        """
        from ..explain import attribution_outside_mask, explain, leaf_mask, overlay

        if method not in METHODS:
            raise UserFacing(f"Unknown explanation {method!r}; choose one of {', '.join(METHODS.values())}.")
        served = self._served()
        names = served.class_names
        if method == "contrast" and len(names) < 2:
            raise UserFacing("A contrast map needs a model with at least two cultivars.")
        cache_key = (served.version_id, key, method, target, other)
        with self._explain_lock:
            if cache_key in self._explained:
                self._explained.move_to_end(cache_key)
                return self._explained[cache_key]
            model = self._explain_model(served)
            x = served.transform(image.convert("RGB"))
            t = names.index(target) if target in names else None
            o = names.index(other) if other in names else None
            with torch.enable_grad():
                result = explain(model, x, method=method, target=t, other=o)  # type: ignore[arg-type]
        view = self.model_view(image)
        heat = result.heatmap
        outside = attribution_outside_mask(heat, leaf_mask(view))
        done = Explained(
            view=view,
            overlay=overlay(view, heat, cmap="jet", alpha=0.45),
            method=method,
            target=names[result.target] if result.target is not None else None,
            other=names[result.other] if result.other is not None else None,
            outside_leaf=float(outside),
            grid_side=int(result.grid_side),
        )
        with self._explain_lock:
            self._explained[cache_key] = done
            while len(self._explained) > _EXPLAIN_CACHE:
                self._explained.popitem(last=False)
        return done

    def _explain_model(self, served: Any) -> torch.nn.Module:
        """Our own instance of the served version (built once per version); caller holds the lock."""
        if self._explainer is not None and self._explainer[0] == served.version_id:
            return self._explainer[1]
        from ..checkpoint import load_built
        from ..training.fit import share_frozen_weights
        from ..training.versions import checkpoint_path

        with LabelStore.open(self.db_path, quick_check=False) as store:
            version = store.model_version(served.version_id)
        built, _ = load_built(checkpoint_path(self.data_dir, version), self.data_dir)
        try:
            share_frozen_weights(served.built.model, built.model)
        except ValueError:
            _logger.info("explainer keeps its own backbone tensors for version %s", served.version_id)
        model = built.model.eval()
        self._explainer = (served.version_id, model)
        return model

    # -- exemplars ----------------------------------------------------------------------------

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
        from ..training.dataset import image_path

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
