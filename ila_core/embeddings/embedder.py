"""Pooled features of the frozen backbone: the CLS token and the mean patch token after the final norm.

The CLS half is exactly what a timm ViT's classifier head reads (``forward_head(..., pre_logits=True)`` with
token pooling), so a head fitted on it is served by the plain backbone plus that head. The mean-patch half
is kept for similarity (nearest exemplars, out-of-distribution scores, near duplicates).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from ..adapters import LinearProbeConfig
from ..checkpoint import backbone_identity, build_reproducible
from ..config import BackboneConfig
from ..training.dataset import Sample, open_rgb
from ..training.transforms import Preprocess, preprocess_for, view_transform
from .store import EmbeddingStore

__all__ = ["Embedder", "build_embedder", "embed_samples", "cls_part"]

_logger = logging.getLogger(__name__)


class Embedder:
    """Computes ``[CLS ‖ mean patch]`` rows (2 x embed_dim) of a frozen model without adapters.

    Args:
        model: a timm ViT whose blocks are the pretrained ones (no adapters: they would change the features).
        preprocess: sizes and normalisation (part of the namespace, so another size never reuses rows).
        backbone_id: the weights' sha256 (or a fingerprint of the tensors).
    """

    def __init__(self, model: nn.Module, preprocess: Preprocess, backbone_id: str, *, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.preprocess, self.backbone_id, self.device = preprocess, backbone_id, device
        self.dim = int(model.embed_dim)
        self._views: dict[int, Callable[[Image.Image], torch.Tensor]] = {}

    def namespace(self, view: int) -> str:
        """Key of this backbone, preprocessing and view in an :class:`EmbeddingStore`."""
        return f"{self.backbone_id}|{self.preprocess.signature()}|view{view}|cls+meanpatch"

    def transform(self, view: int) -> Callable[[Image.Image], torch.Tensor]:
        if view not in self._views:
            self._views[view] = view_transform(self.preprocess, view)
        return self._views[view]

    @torch.no_grad()
    def compute(self, images: Sequence[Image.Image], view: int = 0) -> torch.Tensor:
        """(B, 2D) float32 rows for PIL images under ``view`` (0: centre crop, 1: its mirror)."""
        tf = self.transform(view)
        batch = torch.stack([tf(im.convert("RGB")) for im in images]).to(self.device)
        tokens = self.model.forward_features(batch)  # (B, N, D), after the final norm
        prefix = int(getattr(self.model, "num_prefix_tokens", 1))
        cls = self.model.forward_head(tokens, pre_logits=True)  # what the classifier reads
        mean = tokens[:, prefix:].mean(dim=1)
        return torch.cat([cls, mean], dim=1).float().cpu()


def cls_part(rows: torch.Tensor, dim: int) -> torch.Tensor:
    """The CLS half of ``[CLS ‖ mean patch]`` rows."""
    return rows[:, :dim]


def build_embedder(
    backbone: BackboneConfig,
    *,
    data_dir: Path | None = None,
    resize_ratio: float = 1.34,
    weights_sha256: str | None = None,
    device: str = "cpu",
) -> Embedder:
    """An :class:`Embedder` over ``backbone``'s frozen weights (no adapters, a dummy one-class head)."""
    built = build_reproducible(backbone, LinearProbeConfig(train_cls_token=False), 1, data_dir=data_dir)
    ident = weights_sha256 or backbone_identity(built)
    prep = preprocess_for(built.model, backbone.image_size, resize_ratio)
    return Embedder(built.model, prep, ident, device=device)


def embed_samples(
    samples: Sequence[Sample],
    embedder: Embedder,
    store: EmbeddingStore,
    view: int = 0,
    *,
    batch_size: int = 32,
    on_batch: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor | None:
    """``[CLS ‖ mean patch]`` rows (N, 2D, fp16) of ``samples``; only the missing ones are computed (and stored).

    Returns None when ``should_stop`` ended the work (what was computed so far stays stored).
    """
    namespace = embedder.namespace(view)
    mask, rows = store.get(namespace, [s.sha256 for s in samples])
    todo = [i for i, hit in enumerate(mask) if not hit]
    out = rows if rows is not None else torch.zeros(len(samples), 2 * embedder.dim, dtype=torch.float16)
    start = time.perf_counter()
    for begin in range(0, len(todo), batch_size):
        if should_stop is not None and should_stop():
            return None
        chunk = todo[begin : begin + batch_size]
        # Duplicate files (same sha256) are computed once per chunk; the rows are the same anyway.
        computed = embedder.compute([open_rgb(samples[i].path) for i in chunk], view)
        store.put(namespace, [samples[i].sha256 for i in chunk], computed)
        out[chunk] = computed.to(torch.float16)
        if on_batch is not None:
            on_batch(begin + len(chunk), len(todo))
    if todo:
        _logger.info("embedded %d images (view %d) in %.1f s", len(todo), view, time.perf_counter() - start)
    return out
