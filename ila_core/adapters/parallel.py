"""Bottleneck adapters that run parallel to a block's MHSA and MLP: Adapter (ADPT), ConvPass, and ILA++.

The block update becomes ``x = x + MHSA(LN1 x) + A_attn(LN1 x)`` then ``x = x + MLP(LN2 x) + A_mlp(LN2 x)``
(ILA_SPEC 1.6). The timm block is kept untouched as ``base_block``; its sub-modules are reused.
"""

from __future__ import annotations

import torch
from torch import nn

from ..tokens import grid_to_tokens, split_prefix, tokens_to_grid
from .init import paper_linear_init_

__all__ = ["BottleneckAdapter", "ConvPassAdapter", "ParallelAdapterBlock"]

_BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")


class BottleneckAdapter(nn.Module):
    """Linear D->d, GELU, Linear d->D, dropout, times ``scale``."""

    def __init__(self, dim: int, bottleneck_dim: int = 8, dropout: float = 0.1, scale: float = 1.0) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck_dim)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck_dim, dim)
        self.drop = nn.Dropout(dropout)
        self.scale = scale
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Xavier-uniform weights, biases ~ N(0, 1e-6) (the paper's Linear init)."""
        paper_linear_init_(self.down, self.up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.up(self.act(self.down(x)))) * self.scale


class ConvPassAdapter(BottleneckAdapter):
    """ConvPass: a 3x3 conv on the patch grid inside the bottleneck; prefix tokens see it as a 1x1 image."""

    def __init__(
        self, dim: int, bottleneck_dim: int = 8, dropout: float = 0.1, scale: float = 1.0, num_prefix_tokens: int = 1
    ) -> None:
        self.num_prefix_tokens = num_prefix_tokens
        super().__init__(dim, bottleneck_dim, dropout, scale)
        self.conv = nn.Conv2d(bottleneck_dim, bottleneck_dim, 3, padding=1)
        nn.init.xavier_uniform_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.act(self.down(x))  # (B, N, d)
        t_prefix, t_patch = split_prefix(t, self.num_prefix_tokens)
        b, p, d = t_prefix.shape
        prefix = self.conv(t_prefix.reshape(b * p, d, 1, 1)).reshape(b, p, d)  # centre tap only
        patch = grid_to_tokens(self.conv(tokens_to_grid(t_patch)))
        t = self.act(torch.cat([prefix, patch], dim=1))
        return self.drop(self.up(t)) * self.scale


class ParallelAdapterBlock(nn.Module):
    """A timm pre-norm ``Block`` with adapters added parallel to its attention and MLP."""

    def __init__(self, base_block: nn.Module, attn_adapter: nn.Module, mlp_adapter: nn.Module) -> None:
        super().__init__()
        missing = [p for p in _BLOCK_PARTS if not hasattr(base_block, p)]
        if missing:
            raise ValueError(f"{type(base_block).__name__} is not a pre-norm timm Block (missing {missing})")
        self.base_block = base_block
        self.attn_adapter = attn_adapter
        self.mlp_adapter = mlp_adapter

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        b = self.base_block
        h = b.norm1(x)
        attn = b.attn(h, attn_mask=attn_mask, is_causal=is_causal) if attn_mask is not None or is_causal else b.attn(h)
        x = x + b.drop_path1(b.ls1(attn)) + self.attn_adapter(h)
        h = b.norm2(x)
        x = x + b.drop_path2(b.ls2(b.mlp(h))) + self.mlp_adapter(h)
        return x
