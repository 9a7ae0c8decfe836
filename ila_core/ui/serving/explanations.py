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
_DISPLAY_BOX = (768, 420)  # the before/after pair is scaled to fit this box (width, height), aspect kept


class ExplanationsMixin:
    """Explanation methods of :class:`~ila_core.ui.serving.ModelRuntime`, which owns this state."""

    data_dir: Path
    db_path: Path
    _served: Callable[[], Any]
    _explain_lock: threading.Lock
    _explainer: tuple[int | None, torch.nn.Module] | None
    _explained: OrderedDict[tuple, Explained]
    predictor: Any

    def _preprocess(self) -> Any:
        from ...training.transforms import preprocess_for

        served = self._served()
        ratio = float((served.manifest.get("train_config") or {}).get("resize_ratio", 1.34))
        return preprocess_for(served.built.model, served.built.backbone.image_size, ratio)

    def model_view(self, image: Image.Image) -> Image.Image:
        """The image as the served model sees it (square resize to the recipe's size, centre crop)."""
        p = self._preprocess()
        square = image.convert("RGB").resize((p.resize, p.resize), Image.Resampling.BICUBIC)
        off = (p.resize - p.image_size) // 2
        return square.crop((off, off, off + p.image_size, off + p.image_size))

    def model_window(self) -> tuple[float, float, float, float]:
        """Where the model's input lies in any photo, as fractions (left, top, right, bottom).

        The square resize stretches both axes to the same side, so the centre crop is the same fraction of the
        photo's width and height whatever its aspect ratio.
        """
        p = self._preprocess()
        off = (p.resize - p.image_size) // 2
        lo, hi = off / p.resize, (off + p.image_size) / p.resize
        return (lo, lo, hi, hi)

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
        from ...explain import attribution_outside_mask, explain, leaf_mask, overlay_in_window

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
        heat = result.heatmap
        outside = attribution_outside_mask(heat, leaf_mask(self.model_view(image)))
        whole = _fit(image.convert("RGB"), _DISPLAY_BOX)  # the whole photo at its aspect ratio, never cropped
        done = Explained(
            view=whole,
            overlay=overlay_in_window(whole, heat, self.model_window(), cmap="jet", alpha=0.45),
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

    def warm_explainer(self) -> bool:
        """Build the explainer for the served version and run one Grad-CAM, so the first real one is fast.

        The first explanation otherwise pays for loading a second model instance, importing captum and the first
        backward pass (53 s on a busy 2-core machine with DINOv2-S). Called in the background after each model
        switch; returns False when no model is served or warming failed (the real request then pays, as before).
        """
        from ...explain import explain

        served = None
        try:
            served = self._served()
            side = int(served.built.backbone.image_size)
            x = served.transform(Image.new("RGB", (side, side), (128, 128, 128)))
            with self._explain_lock:  # not through the cache: nothing of this grey square is worth keeping
                model = self._explain_model(served)
                with torch.enable_grad():
                    explain(model, x, method="gradcam")
        except UserFacing:
            return False
        except Exception as exc:  # a convenience: the real request reports its own error, so no traceback here
            _logger.info("explanation path not warmed (version %s): %s", getattr(served, "version_id", None), exc)
            return False
        return True

    @property
    def explainer_ready(self) -> bool:
        """True when the served version's explainer instance is built."""
        served = self.predictor.current
        return served is not None and self._explainer is not None and self._explainer[0] == served.version_id

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


def _fit(image: Image.Image, box: tuple[int, int]) -> Image.Image:
    """``image`` scaled (up or down) to fit ``box`` with its aspect ratio kept: the page shows it at this size."""
    scale = min(box[0] / image.width, box[1] / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)
