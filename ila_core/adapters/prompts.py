"""Visual Prompt Tuning (Jia et al., 2022): learned tokens placed after the prefix tokens.

Shallow: prompts are inserted before the first block. Deep: every block gets its own prompts, replacing
the previous block's prompt outputs. Prompts are stripped after the last block so everything downstream
(final norm, pooling, head, explanations) sees the original token layout.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["PromptTokens", "PromptBlock"]


class PromptTokens(nn.Module):
    """``num_prompts`` learned tokens of width ``dim``."""

    def __init__(self, num_prompts: int, dim: int, patch_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.empty(1, num_prompts, dim))
        self.dropout = dropout
        self._patch_dim = patch_dim
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Uniform init scaled like the patch projection (VPT's Xavier-style choice)."""
        bound = math.sqrt(6.0 / float(self._patch_dim + self.tokens.shape[-1]))
        nn.init.uniform_(self.tokens, -bound, bound)

    def expand(self, batch_size: int) -> torch.Tensor:
        """(B, num_prompts, dim) prompts for a batch."""
        # a plain method, not forward(): module hooks (FLOP counter) choke on outputs that are views of parameters
        return F.dropout(self.tokens.expand(batch_size, -1, -1), self.dropout, self.training)


class PromptBlock(nn.Module):
    """Runs ``base_block`` with ``num_slots`` prompt tokens right after the prefix tokens.

    Args:
        base_block: the untouched timm block.
        prompts: this block's prompts, or None to keep the incoming ones (shallow VPT after block 0).
        num_prefix_tokens: tokens before the prompts (CLS, registers).
        num_slots: number of prompt tokens in the sequence.
        insert: True for the first block (the input has no prompt slots yet).
        strip: True for the last block (remove the prompt slots after it).
    """

    def __init__(
        self,
        base_block: nn.Module,
        prompts: PromptTokens | None,
        num_prefix_tokens: int,
        num_slots: int,
        insert: bool,
        strip: bool,
    ) -> None:
        super().__init__()
        self.base_block = base_block
        self.prompts = prompts
        self.num_prefix_tokens = num_prefix_tokens
        self.num_slots = num_slots
        self.insert = insert
        self.strip = strip

    def forward(self, x: torch.Tensor, **kwargs: object) -> torch.Tensor:
        p, n = self.num_prefix_tokens, self.num_slots
        if self.prompts is not None:
            rest = x[:, p:] if self.insert else x[:, p + n :]  # deep VPT replaces the previous prompts
            x = torch.cat([x[:, :p], self.prompts.expand(x.shape[0]), rest], dim=1)
        x = self.base_block(x, **kwargs)
        if self.strip:
            x = torch.cat([x[:, :p], x[:, p + n :]], dim=1)
        return x
