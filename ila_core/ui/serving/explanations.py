"""Explanations for :class:`~ila_core.ui.serving.ModelRuntime`: heatmaps on the runtime's own model instance."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ...store import LabelStore
from ..errors import UserFacing
from .results import METHODS, Explained

__all__ = ["ExplanationsMixin"]

_logger = logging.getLogger(__name__)

_EXPLAIN_CACHE = 64


class ExplanationsMixin:
    """Explanation methods of :class:`~ila_core.ui.serving.ModelRuntime`, which owns this state."""

    data_dir: Path
    db_path: Path
    _served: Callable[[], Any]
    _explain_lock: threading.Lock
    _explainer: tuple[int | None, torch.nn.Module] | None
    _explained: OrderedDict[tuple, Explained]

    def model_view(self, image: Image.Image) -> Image.Image:
        """The image as the served model sees it (square resize to the recipe's size, centre crop)."""
        from ...training.transforms import preprocess_for

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
        from ...explain import attribution_outside_mask, explain, leaf_mask, overlay

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
        from ...checkpoint import load_built
        from ...training.fit import share_frozen_weights
        from ...serving.paths import checkpoint_path

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
