"""The ``probe`` kind of model version: the frozen backbone (no adapters) plus a closed-form head.

Fitted in seconds from the cached frozen embeddings (:mod:`ila_core.embeddings`), with its regularisation
chosen by cross-validation on the train split only (:func:`~ila_core.training.probe.fit_probe`). It is saved
and served like any version (a ``linear`` method checkpoint with a frozen CLS token: only the head is stored),
so the Predictor, the manifest and the metrics are the same as for ILA; it is the floor every trained version
is compared with before it may be served.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from ..adapters import LinearProbeConfig
from ..backbone import BuiltModel
from ..checkpoint import backbone_identity, build_reproducible
from ..config import BackboneConfig
from ..embeddings import Embedder, EmbeddingStore, cls_part, embed_samples
from ..training.dataset import TrainingSet
from ..training.metrics import EvalMetrics, MetricAccumulator
from ..training.model_setup import share_frozen_weights
from ..training.probe import ProbeFit, fit_probe
from ..training.transforms import preprocess_for

__all__ = ["ProbeRun", "PROBE_METHOD", "fit_probe_version"]

_logger = logging.getLogger(__name__)

PROBE_METHOD = LinearProbeConfig(train_cls_token=False)  # only the head differs from the pretrained network


@dataclass(frozen=True)
class ProbeRun:
    """A fitted probe ready to publish."""

    built: BuiltModel  # the frozen backbone with the fitted head
    fit: ProbeFit
    metrics: EvalMetrics | None  # holdout metrics (None without holdout images)
    embed_seconds: float
    fit_seconds: float

    def extra(self) -> dict[str, Any]:
        """What the manifest records about the fit."""
        cv = self.fit.cv_top1
        return {"kind": "probe", "alpha": self.fit.alpha, "cv_top1": None if math.isnan(cv) else cv,  # JSON has no NaN
                "temperature": self.fit.temperature, "embed_seconds": round(self.embed_seconds, 2),
                "fit_seconds": round(self.fit_seconds, 3)}  # fmt: skip


def fit_probe_version(
    backbone: BackboneConfig,
    data: TrainingSet,
    *,
    store: EmbeddingStore,
    data_dir: Path | None = None,
    resize_ratio: float = 1.34,
    hflip: bool = True,
    seed: int = 0,
    share_from: torch.nn.Module | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> ProbeRun | None:
    """Embed what is missing, fit the head on the train split, evaluate on the holdout; None when stopped.

    Args:
        store: the embedding store (rows computed here stay for later runs, exemplars and scores).
        hflip: also fit on the mirror view of each training image (the two views share a CV fold).
        share_from: a model on the same backbone whose frozen tensors the new one may reuse.
    """
    progress = on_progress or (lambda _: None)
    built = build_reproducible(backbone, PROBE_METHOD, len(data.class_names), data_dir=data_dir)
    if share_from is not None:
        try:
            share_frozen_weights(share_from, built.model)
        except ValueError as exc:
            _logger.info("probe does not share backbone tensors: %s", exc)
    model = built.model
    embedder = Embedder(model, preprocess_for(model, backbone.image_size, resize_ratio),
                        backbone_identity(built))  # fmt: skip
    start = time.perf_counter()
    jobs = [(data.train, 0), *([(data.train, 1)] if hflip else []), (data.holdout, 0)]
    total = sum(len(samples) for samples, _ in jobs)
    done = 0
    rows = []
    for samples, view in jobs:
        base = done
        out = embed_samples(samples, embedder, store, view, should_stop=should_stop,
                            on_batch=lambda d, _n, b=base: progress({"phase": "embed", "step": b + d,
                                                                      "total_steps": total}))  # fmt: skip
        if out is None:
            return None
        rows.append(cls_part(out, embedder.dim).float())
        done += len(samples)
    embed_seconds = time.perf_counter() - start
    train_rows = rows[:-1]
    labels = torch.tensor([s.label for s in data.train], dtype=torch.long)
    groups = torch.arange(len(data.train))
    progress({"phase": "probe", "step": 0, "total_steps": 1})
    fit = fit_probe(torch.cat(train_rows), labels.repeat(len(train_rows)), len(data.class_names),
                    groups=groups.repeat(len(train_rows)), seed=seed)  # fmt: skip
    head = model.get_classifier()
    with torch.no_grad():
        head.weight.copy_(fit.weight.to(head.weight))
        head.bias.copy_(fit.bias.to(head.bias))
    metrics = None
    if data.holdout:
        metrics = _metrics(fit, rows[-1], torch.tensor([s.label for s in data.holdout]), data.class_names)
    model.eval()
    _logger.info("probe fitted on %d images in %.2f s (embedding %.1f s): alpha %.3g, out-of-fold top-1 %.3f%s",
                 len(data.train), fit.seconds, embed_seconds, fit.alpha, fit.cv_top1,
                 f", holdout top-1 {metrics.top1:.3f}" if metrics else "")  # fmt: skip
    return ProbeRun(built, fit, metrics, embed_seconds, fit.seconds)


def _metrics(fit: ProbeFit, features: torch.Tensor, targets: torch.Tensor, class_names: list[str]) -> EvalMetrics:
    acc = MetricAccumulator(len(class_names))
    logits = fit.logits(features)
    acc.update(logits, targets, F.cross_entropy(logits, targets, reduction="sum"))
    return acc.compute(class_names)
