"""Frozen-prefix feature cache: run the frozen blocks before the first trainable module once per input view.

With a frozen backbone, every block before the first trainable module computes the same tokens for the same
input every epoch. Those tokens are computed once, stored in fp16 (in memory and in a bounded folder
under ``<data_dir>/cache/``), and training runs only the rest of the network (:class:`SuffixModel`).

What counts as "frozen prefix" (:func:`plan_prefix`), thought through for ILA:

* The CLS token is trainable in the paper's recipe and enters the sequence at the position-embedding
  stage. Attention mixes it into every patch token from block 0 on, so with a trainable CLS **no block
  output is frozen** — caching the patch part of block outputs would be wrong. Only the patch embedding
  (before the CLS is concatenated) is frozen then; that is what gets cached (``embed_only``), which saves
  little.
* With the CLS frozen (the ``quick`` preset sets ``train_cls_token=False``), the patch embedding, the
  position embedding and every block up to the first adapter are frozen: for ILA with DS-ILAs after blocks
  3 and 7, blocks 0..3 run once (``base_block`` of block 3 included; its adapter starts the suffix). The
  cost: 1 x D fewer trainable parameters and a CLS fixed at its pretrained value.

Views are fixed: the test transform of the image and of its mirror (the recipe's random crop is given up;
the flip is kept by picking one of the two views at random each epoch). The prefix always runs in eval mode
(no backbone dropout there), so cached training differs from the paper recipe in exactly these two points.
Evaluation uses view 0, which equals the uncached test transform: cached and uncached eval logits agree to
fp16 precision.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ..adapters import ILABlock
from .dataset import Sample, open_rgb
from .transforms import Preprocess, view_transform

__all__ = ["PrefixPlan", "plan_prefix", "run_prefix", "SuffixModel", "FeatureCache", "CachedFeatures",
           "CachedDataset"]  # fmt: skip

_logger = logging.getLogger(__name__)


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


@dataclass(frozen=True)
class PrefixPlan:
    """Where the frozen prefix ends."""

    embed_only: bool  # prefix = patch embedding only (a trainable CLS/register token enters after it)
    full_blocks: int  # blocks 0 .. full_blocks-1 run whole in the prefix
    split_block: bool  # blocks[full_blocks] is an ILABlock whose base_block is in the prefix, adapter in the suffix

    def describe(self) -> str:
        """Stable text naming the cut (part of cache keys)."""
        if self.embed_only:
            return "patch_embed"
        return f"blocks<{self.full_blocks}" + (f"+base{self.full_blocks}" if self.split_block else "")


def plan_prefix(model: nn.Module) -> PrefixPlan | None:
    """The longest frozen prefix of a timm ViT with injected modules; None if the embedding trains."""
    pos = getattr(model, "pos_embed", None)
    if _trainable(model.patch_embed) or (isinstance(pos, nn.Parameter) and pos.requires_grad):
        return None
    tokens = [getattr(model, n, None) for n in ("cls_token", "reg_token")]
    if any(isinstance(t, nn.Parameter) and t.requires_grad for t in tokens):
        return PrefixPlan(embed_only=True, full_blocks=0, split_block=False)
    blocks = list(model.blocks)
    j = next((i for i, blk in enumerate(blocks) if _trainable(blk)), len(blocks))
    split = j < len(blocks) and isinstance(blocks[j], ILABlock) and not _trainable(blocks[j].base_block)
    return PrefixPlan(embed_only=False, full_blocks=j, split_block=split)


def _prefix_modules(model: nn.Module, plan: PrefixPlan) -> list[nn.Module]:
    mods = [model.patch_embed]
    if not plan.embed_only:
        mods += [model.patch_drop, model.norm_pre, *list(model.blocks)[: plan.full_blocks]]
        if plan.split_block:
            mods.append(model.blocks[plan.full_blocks].base_block)
    return mods


@contextlib.contextmanager
def _eval_mode(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Eval mode for ``modules`` (and their children) inside the block; their previous modes after."""
    saved = [(m, m.training) for mod in modules for m in mod.modules()]
    try:
        for mod in modules:
            mod.eval()
        yield
    finally:
        for m, mode in saved:
            m.training = mode


@torch.no_grad()
def run_prefix(model: nn.Module, plan: PrefixPlan, images: torch.Tensor) -> torch.Tensor:
    """Tokens after the frozen prefix for preprocessed ``images`` (B, 3, S, S), computed in eval mode."""
    with _eval_mode(_prefix_modules(model, plan)):
        x = model.patch_embed(images)
        if plan.embed_only:
            return x
        x = model.norm_pre(model.patch_drop(model._pos_embed(x)))  # timm's own embedding step (CLS, pos)
        for blk in list(model.blocks)[: plan.full_blocks]:
            x = blk(x)
        if plan.split_block:
            x = model.blocks[plan.full_blocks].base_block(x)
    return x


class SuffixModel(nn.Module):
    """The part of ``model`` after the frozen prefix: prefix tokens in, logits out.

    It holds ``model`` as a child, so ``parameters()`` / ``train()`` / DDP see the whole model; only the suffix
    runs.
    """

    def __init__(self, model: nn.Module, plan: PrefixPlan) -> None:
        super().__init__()
        self.model = model
        self.plan = plan

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        m, plan = self.model, self.plan
        x = tokens
        blocks = list(m.blocks)
        if plan.embed_only:
            x = m.norm_pre(m.patch_drop(m._pos_embed(x)))
            start = 0
        else:
            start = plan.full_blocks
            if plan.split_block:
                x = blocks[start].adapter(x)
                start += 1
        for blk in blocks[start:]:
            x = blk(x)
        return m.forward_head(m.norm(x))


class FeatureCache:
    """fp16 tensors by key, in memory up to a budget and on disk in a bounded folder.

    With ``write_through`` (the default when a folder is given) every entry also goes to disk, so a later
    process (a CLI run, a worker child, the app after a restart) starts warm; otherwise the disk only takes
    what memory cannot hold. Entries that fit nowhere are dropped (and recomputed when needed). Safe to share
    between threads and processes: disk entries are safetensors files written atomically, so a killed run
    never leaves a half entry; unreadable entries count as misses and are deleted.
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        max_memory_mb: float = 512,
        max_disk_mb: float = 2048,
        write_through: bool = True,
    ) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.max_memory = int(max_memory_mb * 2**20)
        self.max_disk = int(max_disk_mb * 2**20) if self.directory is not None else 0
        self.write_through = write_through
        self._mem: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.memory_bytes = 0
        self.disk_bytes = 0
        self.hits = self.misses = self.dropped = 0
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._trim_disk()

    def _file(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / key[:2] / f"{key}.safetensors"

    def _trim_disk(self) -> None:
        """Delete leftover temp files and the oldest entries beyond the disk budget."""
        for tmp in self.directory.glob("*/*.tmp"):
            tmp.unlink(missing_ok=True)  # left by a killed write
        files = sorted(self.directory.glob("*/*.safetensors"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        while files and total > self.max_disk:
            victim = files.pop(0)
            total -= victim.stat().st_size
            victim.unlink(missing_ok=True)
        self.disk_bytes = total

    def _remember(self, key: str, t: torch.Tensor) -> bool:
        """Keep ``t`` in memory if it fits (call with the lock held)."""
        if key in self._mem:
            return True
        size = t.numel() * t.element_size()
        if self.memory_bytes + size > self.max_memory:
            return False
        self._mem[key] = t
        self.memory_bytes += size
        return True

    def get(self, key: str) -> torch.Tensor | None:
        """The stored tensor (fp16, CPU) or None."""
        with self._lock:
            t = self._mem.get(key)
            if t is not None:
                self.hits += 1
                return t
        if self.directory is not None:
            path = self._file(key)
            if path.is_file():
                from safetensors.torch import load_file

                try:
                    t = load_file(str(path))["t"]
                except Exception:  # a damaged entry is a miss, never an error
                    path.unlink(missing_ok=True)
                else:
                    with self._lock:
                        self.hits += 1
                        self._remember(key, t)
                    return t
        with self._lock:
            self.misses += 1
        return None

    def put(self, key: str, tensor: torch.Tensor) -> None:
        """Store ``tensor`` as fp16 on the CPU: memory if it fits, disk if write-through or memory is full."""
        t = tensor.detach().to("cpu", torch.float16).contiguous()
        size = t.numel() * t.element_size()
        on_disk = self.directory is not None and self._file(key).is_file()
        with self._lock:
            in_memory = self._remember(key, t)
            to_disk = (self.directory is not None and not on_disk and (self.write_through or not in_memory)
                       and self.disk_bytes + size <= self.max_disk)  # fmt: skip
            if to_disk:
                self.disk_bytes += size
            elif not (in_memory or on_disk):
                self.dropped += 1
        if to_disk:
            self._write(key, t)

    def _write(self, key: str, t: torch.Tensor) -> None:
        from safetensors.torch import save

        path = self._file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(save({"t": t}))
            os.replace(tmp, path)
        except OSError as exc:  # a full disk only loses the cache entry
            Path(tmp).unlink(missing_ok=True)
            _logger.warning("feature cache spill failed (%s); entry kept nowhere", exc)

    def clear_memory(self) -> None:
        """Drop the in-memory entries (disk entries stay)."""
        with self._lock:
            self._mem.clear()
            self.memory_bytes = 0

    def stats(self) -> dict[str, int]:
        """Hits, misses, dropped entries and bytes used."""
        return {"hits": self.hits, "misses": self.misses, "dropped": self.dropped,
                "memory_bytes": self.memory_bytes, "disk_bytes": self.disk_bytes}  # fmt: skip


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
                for s, tokens in zip(group, self.compute(group, view)):
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
    """``(prefix tokens as fp32, label)``; training picks view 0 or 1 per sample each epoch, eval uses view 0."""

    def __init__(self, samples: Sequence[Sample], features: CachedFeatures, *, train: bool, seed: int = 0) -> None:
        self.samples, self.features, self.train, self.seed = list(samples), features, train, seed
        self._views = torch.zeros(len(self.samples), dtype=torch.long)

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
