"""Conversions between token sequences and spatial grids.

The number of prefix tokens (CLS, registers, prompts) always comes from the model, never from whether
the token count happens to be a perfect square.
"""

from __future__ import annotations

import math

import torch

__all__ = ["tokens_to_grid", "grid_to_tokens", "split_prefix", "grid_side"]


def grid_side(num_patch_tokens: int) -> int:
    """Side of the square grid holding ``num_patch_tokens`` tokens.

    Raises:
        ValueError: if the patch tokens do not form a square grid.
    """
    side = math.isqrt(num_patch_tokens)
    if side * side != num_patch_tokens:
        raise ValueError(f"{num_patch_tokens} patch tokens do not form a square grid (ILA needs square inputs)")
    return side


def split_prefix(x: torch.Tensor, num_prefix_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split (B, N, D) tokens into prefix (B, P, D) and patch (B, N - P, D) tokens."""
    return x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]


def tokens_to_grid(patches: torch.Tensor) -> torch.Tensor:
    """(B, H*W, D) patch tokens -> (B, D, H, W) grid."""
    b, n, d = patches.shape
    side = grid_side(n)
    return patches.transpose(1, 2).reshape(b, d, side, side)


def grid_to_tokens(grid: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) grid -> (B, H*W, D) tokens in raster order."""
    return grid.flatten(2).transpose(1, 2)
