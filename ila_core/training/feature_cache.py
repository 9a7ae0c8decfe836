"""Frozen-prefix feature cache: run the frozen blocks before the first trainable module once per input view.

With a frozen backbone, every block before the first trainable module computes the same tokens for the same
input every epoch. Those tokens are computed once, stored in fp16 (in memory and in a bounded folder
under ``<data_dir>/cache/``), and training runs only the rest of the network (:class:`SuffixModel`).

The parts: where the frozen prefix ends and the model after it (:mod:`ila_core.training.frozen_prefix`,
whose docstring says what counts as "frozen prefix" with a trainable or frozen CLS), the bounded memory and
disk store (:mod:`ila_core.training.tensor_cache`), and here the cached views of samples and the dataset that
serves them. Every name is importable from this module.

Views are fixed: the test transform of the image and of its mirror (the recipe's random crop is given up;
the flip is kept by picking one of the two views at random each epoch). The prefix always runs in eval mode
(no backbone dropout there), so cached training differs from the paper recipe in exactly these two points.
Evaluation uses view 0, which equals the uncached test transform: cached and uncached eval logits agree to
fp16 precision.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from .dataset import Sample, open_rgb
from .frozen_prefix import PrefixPlan, SuffixModel, plan_prefix, run_prefix
from .tensor_cache import FeatureCache
from .transforms import Preprocess, view_transform

__all__ = ["PrefixPlan", "plan_prefix", "run_prefix", "SuffixModel", "FeatureCache", "CachedFeatures",
           "CachedDataset"]  # fmt: skip


class CachedFeatures:
    """Prefix tokens of samples under the fixed views, for one model and preprocessing."""

    def __init__(
        self, model: nn.Module, plan: PrefixPlan, preprocess: Preprocess, cache: FeatureCache, backbone_id: str
    ) -> None:
        self.model, self.plan, self.preprocess, self.cache = model, plan, preprocess, cache
        self.context = f"{backbone_id}|{preprocess.signature()}|{plan.describe()}"
        self._views = {}

    def key(self, sample: Sample, view: int) -> str:
        """Cache key of (image content, view, backbone, image size and normalisation, prefix cut)."""
        return hashlib.sha256(f"{sample.sha256}|{view}|{self.context}".encode()).hexdigest()

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _transform(self, view: int) -> Callable:
        if view not in self._views:
            self._views[view] = view_transform(self.preprocess, view)
        return self._views[view]

    def compute(self, samples: Sequence[Sample], view: int) -> torch.Tensor:
        """Prefix tokens of ``samples`` under ``view`` (not cached)."""
        tf = self._transform(view)
        images = torch.stack([tf(open_rgb(s.path)) for s in samples]).to(self._device())
        return run_prefix(self.model, self.plan, images)

    def fill(
        self,
        samples: Sequence[Sample],
        views: Sequence[int] = (0, 1),
        *,
        batch_size: int = 32,
        on_batch: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> int:
        """Compute and store every missing (sample, view); returns how many were computed."""
        todo = [(s, v) for v in views for s in samples if self.cache.get(self.key(s, v)) is None]
        done = 0
        for start in range(0, len(todo), batch_size):
            if should_stop is not None and should_stop():
                break
            chunk = todo[start : start + batch_size]
            for view in sorted({v for _, v in chunk}):
                group = [s for s, v in chunk if v == view]
                for s, tokens in zip(group, self.compute(group, view), strict=True):  # one row per sample
                    self.cache.put(self.key(s, view), tokens)
            done += len(chunk)
            if on_batch is not None:
                on_batch(done, len(todo))
        return done

    def tokens(self, sample: Sample, view: int) -> torch.Tensor:
        """fp16 tokens of one (sample, view), computed now if the cache could not keep them."""
        t = self.cache.get(self.key(sample, view))
        if t is None:
            t = self.compute([sample], view)[0].to("cpu", torch.float16)
        return t


class CachedDataset(Dataset):
    """``(prefix tokens as fp32, label)``; training picks view 0 or 1 per sample each epoch, eval uses ``view``."""

    def __init__(
        self, samples: Sequence[Sample], features: CachedFeatures, *, train: bool, seed: int = 0, view: int = 0
    ) -> None:
        self.samples, self.features, self.train, self.seed = list(samples), features, train, seed
        self._views = torch.full((len(self.samples),), view, dtype=torch.long)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's view per sample (deterministic in seed and epoch)."""
        if self.train:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._views = torch.randint(0, 2, (len(self.samples),), generator=g)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        s = self.samples[i]
        return self.features.tokens(s, int(self._views[i])).float(), s.label
