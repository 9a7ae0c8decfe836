"""Frozen-prefix feature cache: run the frozen blocks before the first trainable module once per input view.

With a frozen backbone, every block before the first trainable module computes the same tokens for the same
input every epoch. Those tokens are computed once, stored in fp16 (in memory and in a bounded folder
under ``<data_dir>/cache/``), and training runs only the rest of the network (:class:`SuffixModel`).

The parts: where the frozen prefix ends and the model after it (:mod:`ila_core.training.frozen_prefix`,
whose docstring says what counts as "frozen prefix" with a trainable or frozen CLS), the bounded memory and
disk store (:mod:`ila_core.training.tensor_cache`), and here the cached views of samples and the dataset that
serves them. Every name is importable from this module.

When the training set's tokens do not fit the cache's budget (about 8,000 images of DINOv2-S at 224 px in the
default 1 GiB memory + 2 GiB disk), a fixed resident subset is cached (:func:`plan_residency`: the first
training images, all their views, then holdout images with what is left) and the rest run the frozen blocks each
time they are used. Nothing is evicted mid-run, so the cached part never thrashes, and the run says how many
images the cache holds (:attr:`Residency.note`).

Views are fixed: the test transform of the image and of its mirror, plus ``TrainConfig.crop_views`` fixed
random crops (with flip) when the recipe asks; each epoch picks one of them per image at random. Without crop
views the recipe's random crop is given up (the flip is kept); with K of them each image is seen in K + 2 crops
rather than a new one every step. The prefix always runs in eval mode
(no backbone dropout there), so cached training differs from the paper recipe in exactly these two points.
Evaluation uses view 0, which equals the uncached test transform: cached and uncached eval logits agree to
fp16 precision.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from .dataset import Sample, open_rgb
from .frozen_prefix import PrefixPlan, SuffixModel, plan_prefix, run_prefix
from .tensor_cache import FeatureCache
from .transforms import Preprocess, view_transform

__all__ = ["PrefixPlan", "plan_prefix", "run_prefix", "SuffixModel", "FeatureCache", "CachedFeatures",
           "CachedDataset", "Residency", "plan_residency"]  # fmt: skip


@dataclass(frozen=True)
class Residency:
    """How many training and holdout images a run keeps in the feature cache, of how many."""

    train: int
    train_total: int
    holdout: int
    holdout_total: int
    entry_bytes: int  # one view of one image
    capacity_bytes: int
    filled_views: int = 0  # image views this run computed into the cache
    fill_seconds: float = 0.0  # how long that took

    @property
    def note(self) -> str | None:
        """Words for a run whose training images do not all fit (for a job card); None when they do."""
        if self.train >= self.train_total:
            return None
        rest = self.train_total - self.train
        return (f"the feature cache holds {self.train:,} of {self.train_total:,} training images "
                f"({self.capacity_bytes / 2**30:.1f} GiB budget, {self.entry_bytes / 2**10:.0f} KiB per view); the "
                f"other {rest:,} run the frozen blocks at every step, so training is slower: a GPU, or a bigger "
                "cache budget, is the way past it")  # fmt: skip


def plan_residency(capacity_bytes: int, entry_bytes: int, n_train: int, train_views: int, n_holdout: int
                   ) -> Residency:  # fmt: skip
    """Which images to cache: training images first (all their views; they are read every epoch), then holdout
    images (read once per evaluation) with what is left."""
    per_train = max(1, entry_bytes * train_views)
    train = min(n_train, capacity_bytes // per_train)
    left = capacity_bytes - train * per_train
    holdout = min(n_holdout, left // max(1, entry_bytes))
    return Residency(int(train), n_train, int(holdout), n_holdout, entry_bytes, capacity_bytes)


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

    def entry_bytes(self, sample: Sample) -> int:
        """Bytes one view of one image takes in the cache (computes and stores view 0 of ``sample``)."""
        return int(self.tokens(sample, 0, keep=True).numel() * 2)  # fp16

    def held(self, samples: Sequence[Sample], views: Sequence[int]) -> int:
        """How many of ``samples`` have every view in the cache."""
        return sum(all(self.cache.contains(self.key(s, v)) for v in views) for s in samples)

    def tokens(self, sample: Sample, view: int, *, keep: bool = False) -> torch.Tensor:
        """fp16 tokens of one (sample, view), computed now if the cache does not hold them (stored only with
        ``keep``: outside the resident subset they are recomputed each time rather than evicting others)."""
        key = self.key(sample, view)
        t = self.cache.get(key)
        if t is None:
            t = self.compute([sample], view)[0].to("cpu", torch.float16)
            if keep:
                self.cache.put(key, t)
        return t


class CachedDataset(Dataset):
    """``(prefix tokens as fp32, label)``; training picks one of ``views`` per sample each epoch, eval uses ``view``."""

    def __init__(
        self, samples: Sequence[Sample], features: CachedFeatures, *, train: bool, seed: int = 0, view: int = 0,
        views: Sequence[int] = (0, 1),
    ) -> None:  # fmt: skip
        self.samples, self.features, self.train, self.seed = list(samples), features, train, seed
        self.choices = torch.tensor(list(views), dtype=torch.long)
        self._views = torch.full((len(self.samples),), view, dtype=torch.long)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's view per sample (deterministic in seed and epoch)."""
        if self.train:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._views = self.choices[torch.randint(0, len(self.choices), (len(self.samples),), generator=g)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        s = self.samples[i]
        return self.features.tokens(s, int(self._views[i])).float(), s.label
