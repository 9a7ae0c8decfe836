"""Record the softmax attention maps of chosen blocks of a timm ViT, with or without adapters.

timm's fused attention (``F.scaled_dot_product_attention``) never forms the attention matrix, so the
recorder switches ``attn.fused_attn`` off on the chosen blocks only, hooks the dropout that follows the
softmax (``attn.attn_drop``; its *input* is the softmax output, so dropout in train mode does not alter
what is recorded), and puts everything back on exit, also after an exception (STYLE item 10).

Because it edits the model while active, run it on a model instance of your own (e.g. one loaded from
a checkpoint for explanations), never on the model a training worker is updating.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..adapters import PromptBlock, base_blocks

__all__ = ["AttentionRecorder", "non_patch_tokens"]

_logger = logging.getLogger(__name__)


def non_patch_tokens(model: nn.Module, block_index: int) -> int:
    """Tokens before the patch grid inside block ``block_index``: the model's prefix tokens plus VPT prompts."""
    extra = 0
    blk = model.blocks[block_index]
    while True:
        if isinstance(blk, PromptBlock):
            extra += blk.num_slots
        if not hasattr(blk, "base_block"):
            break
        blk = blk.base_block
    return int(model.num_prefix_tokens) + extra


class AttentionRecorder:
    """Context manager that keeps the latest (B, heads, N, N) attention map of each chosen block.

    Args:
        model: a timm ``VisionTransformer``, adapters injected or not.
        blocks: 0-based indices into ``model.blocks``; None records every block.

    Example:
        >>> with AttentionRecorder(model) as rec:
        ...     model(x)
        >>> rec.maps[0].shape  # (B, heads, N, N); N shrinks after each down-sampling ILA
    """

    def __init__(self, model: nn.Module, blocks: Sequence[int] | None = None) -> None:
        depth = len(model.blocks)
        self.blocks = tuple(range(depth)) if blocks is None else tuple(int(b) for b in blocks)
        bad = [b for b in self.blocks if not 0 <= b < depth]
        if bad:
            raise ValueError(f"block indices {bad} outside 0..{depth - 1}")
        self.model = model
        self.maps: dict[int, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = []
        self._fused: list[tuple[nn.Module, bool]] = []

    def _attn_modules(self) -> list[tuple[int, nn.Module]]:
        bases = base_blocks(self.model)
        out = []
        for i in self.blocks:
            attn = getattr(bases[i], "attn", None)
            if attn is None or not hasattr(attn, "attn_drop"):
                raise ValueError(f"block {i} ({type(bases[i]).__name__}) has no timm attention with attn_drop")
            out.append((i, attn))
        return out

    def _hook(self, index: int):
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            self.maps[index] = inputs[0].detach()  # softmax output, before attention dropout

        return record

    def __enter__(self) -> Self:
        try:
            for i, attn in self._attn_modules():
                if hasattr(attn, "fused_attn"):
                    self._fused.append((attn, attn.fused_attn))
                    attn.fused_attn = False
                self._handles.append(attn.attn_drop.register_forward_pre_hook(self._hook(i)))
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def release(self) -> None:
        """Remove the hooks and restore ``fused_attn``; safe to call twice."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for attn, old in self._fused:
            attn.fused_attn = old
        self._fused.clear()

    def clear(self) -> None:
        """Forget the recorded maps (between minibatches)."""
        self.maps.clear()

    def ordered(self) -> list[torch.Tensor]:
        """Recorded maps in block order.

        Raises:
            RuntimeError: a chosen block recorded nothing (no forward ran, or fused attention was forced on).
        """
        missing = [b for b in self.blocks if b not in self.maps]
        if missing:
            raise RuntimeError(f"no attention recorded for blocks {missing}; run a forward inside the context")
        return [self.maps[b] for b in self.blocks]
