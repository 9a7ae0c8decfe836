"""Linear CKA between the attention maps of all layers of a model (Fig. 3 of Rios et al., 2024; ILA_SPEC 5.4).

Features of a layer are the per-image softmax attention maps (heads x N x N) flattened, so layers with
different token counts (before and after a down-sampling ILA) still compare: only B x B Gram matrices
meet. Following Nguyen et al. (2021, "Do wide and deep networks learn the same things?", Eq. 3):

* linear kernel ``K = X X^T`` with its diagonal set to zero;
* the unbiased HSIC estimator
  ``HSIC_1(K, L) = [tr(K L) + (1^T K 1)(1^T L 1) / ((n-1)(n-2)) - 2/(n-2) 1^T K L 1] / (n (n-3))``;
* minibatch accumulation: HSIC(K, L), HSIC(K, K) and HSIC(L, L) are each averaged over batches, then
  ``CKA = HSIC_KL / sqrt(HSIC_KK * HSIC_LL)``.

The estimator needs at least 4 images per batch; smaller batches are skipped with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..explain.modes import eval_mode
from ..explain.recorder import AttentionRecorder

__all__ = ["CKAAccumulator", "cka", "cka_matrix", "gram_linear", "hsic_unbiased_pairwise"]

_logger = logging.getLogger(__name__)

MIN_BATCH = 4  # n (n - 3) in the estimator's denominator


def gram_linear(features: torch.Tensor) -> torch.Tensor:
    """(n, ...) features -> (n, n) float64 linear Gram matrix with a zero diagonal."""
    x = features.reshape(features.shape[0], -1).double()
    gram = x @ x.T
    gram.fill_diagonal_(0.0)
    return gram


def hsic_unbiased_pairwise(grams: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC between every pair of (L, n, n) zero-diagonal Gram matrices -> (L, L).

    Raises:
        ValueError: fewer than 4 samples.
    """
    num, n = grams.shape[0], grams.shape[-1]
    if n < MIN_BATCH:
        raise ValueError(f"unbiased HSIC needs at least {MIN_BATCH} samples, got {n}")
    flat = grams.reshape(num, n * n)
    trace_kl = flat @ flat.T  # tr(K L) = sum_ij K_ij L_ij for symmetric matrices
    sums = flat.sum(dim=1)  # 1^T K 1
    rows = grams.sum(dim=2)  # K 1, (L, n)
    term2 = torch.outer(sums, sums) / ((n - 1) * (n - 2))
    term3 = (rows @ rows.T) * (2.0 / (n - 2))  # 1^T K L 1 = (K 1)^T (L 1)
    return (trace_kl + term2 - term3) / (n * (n - 3))


class CKAAccumulator:
    """Averages pairwise HSIC over minibatches; ``result()`` gives the (L, L) CKA matrix."""

    def __init__(self) -> None:
        self._sum: torch.Tensor | None = None
        self.batches = 0

    def update(self, features: Sequence[torch.Tensor]) -> bool:
        """Add one minibatch: one (n, ...) feature tensor per layer. Returns False if skipped (n < 4)."""
        n = int(features[0].shape[0])
        if any(int(f.shape[0]) != n for f in features):
            raise ValueError("all layers must see the same images")
        if n < MIN_BATCH:
            _logger.warning("CKA: skipping a batch of %d images (the unbiased estimator needs %d)", n, MIN_BATCH)
            return False
        grams = torch.stack([gram_linear(f).cpu() for f in features])  # (L, n, n)
        hsic = hsic_unbiased_pairwise(grams)
        if self._sum is not None and self._sum.shape != hsic.shape:
            raise ValueError(f"layer count changed between batches ({self._sum.shape[0]} -> {hsic.shape[0]})")
        self._sum = hsic if self._sum is None else self._sum + hsic
        self.batches += 1
        return True

    def result(self) -> np.ndarray:
        """(L, L) CKA from the averaged HSIC values.

        Raises:
            ValueError: no batch was accumulated.
        """
        if self._sum is None:
            raise ValueError(f"no batch of at least {MIN_BATCH} images was seen")
        hsic = self._sum / self.batches
        diag = torch.diagonal(hsic).clamp_min(0.0)
        denom = torch.sqrt(torch.outer(diag, diag))
        out = torch.where(denom > 0, hsic / denom.clamp_min(1e-300), torch.full_like(hsic, float("nan")))
        out = 0.5 * (out + out.T)  # exact symmetry despite float rounding
        return out.numpy()


def cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (unbiased HSIC) between two feature sets of the same n >= 4 samples."""
    acc = CKAAccumulator()
    if not acc.update([x, y]):
        raise ValueError(f"CKA needs at least {MIN_BATCH} samples, got {x.shape[0]}")
    return float(acc.result()[0, 1])


def _images(batch: object) -> torch.Tensor:
    # DataLoader batches are often (images, labels); accept both forms
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    if not isinstance(batch, torch.Tensor) or batch.dim() != 4:
        raise ValueError("each batch must be a (B, 3, H, W) tensor or a tuple starting with one")
    return batch


def cka_matrix(model: nn.Module, batches: Iterable[object], *, blocks: Sequence[int] | None = None) -> np.ndarray:
    """CKA between the attention maps of every pair of blocks of ``model`` over ``batches``.

    Args:
        model: a timm ViT, adapters injected or not (its attention is recorded temporarily, eval mode).
        batches: (B, 3, H, W) tensors (or ``(images, labels)`` tuples) on the model's device.
        blocks: block indices to compare (default: all).

    Returns:
        (L, L) float64 array, symmetric, ones on the diagonal.
    """
    acc = CKAAccumulator()
    with eval_mode(model), torch.no_grad(), AttentionRecorder(model, blocks) as rec:
        for batch in batches:
            rec.clear()
            model(_images(batch))
            acc.update([a.flatten(1) for a in rec.ordered()])  # (B, heads * N * N) per block
    _logger.info("CKA over %d batches, %d layers", acc.batches, len(rec.blocks))
    return acc.result()
