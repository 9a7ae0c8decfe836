"""The frozen prefix of a ViT with injected modules: where it ends, running it, and the model after it.

Part of the frozen-prefix feature cache (:mod:`ila_core.training.feature_cache`). What counts as "frozen
prefix" (:func:`plan_prefix`), thought through for ILA:

* The CLS token is trainable in the paper's recipe and enters the sequence at the position-embedding
  stage. Attention mixes it into every patch token from block 0 on, so with a trainable CLS **no block
  output is frozen** — caching the patch part of block outputs would be wrong. Only the patch embedding
  (before the CLS is concatenated) is frozen then; that is what gets cached (``embed_only``), which saves
  little.
* With the CLS frozen (the ``quick`` preset sets ``train_cls_token=False``), the patch embedding, the
  position embedding and every block up to the first adapter are frozen: for ILA with DS-ILAs after blocks
  3 and 7, blocks 0..3 run once (``base_block`` of block 3 included; its adapter starts the suffix). The
  cost: 1 x D fewer trainable parameters and a CLS fixed at its pretrained value.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..adapters import ILABlock

__all__ = ["PrefixPlan", "plan_prefix", "run_prefix", "SuffixModel"]


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


@dataclass(frozen=True)
class PrefixPlan:
    """Where the frozen prefix ends."""

    embed_only: bool  # prefix = patch embedding only (a trainable CLS/register token enters after it)
    full_blocks: int  # blocks 0 .. full_blocks-1 run whole in the prefix
    split_block: bool  # blocks[full_blocks] is an ILABlock whose base_block is in the prefix, adapter in the suffix
    keep_tokens: int = 0  # > 0: only the first n tokens are kept (every block frozen and the head reads the CLS)

    def describe(self) -> str:
        """Stable text naming the cut (part of cache keys)."""
        if self.embed_only:
            return "patch_embed"
        text = f"blocks<{self.full_blocks}" + (f"+base{self.full_blocks}" if self.split_block else "")
        return text + (f"|tokens<{self.keep_tokens}" if self.keep_tokens else "")


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
    keep = 1 if j == len(blocks) and _reads_cls_only(model) else 0
    return PrefixPlan(embed_only=False, full_blocks=j, split_block=split, keep_tokens=keep)


def _reads_cls_only(model: nn.Module) -> bool:
    """True when the head sees only the CLS token through a per-token norm (a linear probe on a timm ViT).

    Then every other token is dead weight in the cache: with all blocks frozen, keeping the CLS row makes an
    entry about 257x smaller for DINOv2-S at 224 px (LayerNorm acts on each token alone, so the norm can stay
    in the suffix).
    """
    per_token = (nn.LayerNorm, nn.Identity)
    return (getattr(model, "global_pool", None) == "token" and getattr(model, "attn_pool", None) is None
            and isinstance(getattr(model, "norm", None), per_token)
            and isinstance(getattr(model, "fc_norm", nn.Identity()), per_token))  # fmt: skip


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
    return x[:, : plan.keep_tokens].contiguous() if plan.keep_tokens else x


class SuffixModel(nn.Module):
    """The part of ``model`` after the frozen prefix: prefix tokens in, logits out.

    It holds ``model`` as a child, so ``parameters()`` / ``train()`` / DDP see the whole model; only the suffix
    runs.
    """

    def __init__(self, model: nn.Module, plan: PrefixPlan) -> None:
        super().__init__()
        self.model = model
        self.plan = plan

    def forward(self, tokens: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
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
        return m.forward_head(m.norm(x), pre_logits=pre_logits)
