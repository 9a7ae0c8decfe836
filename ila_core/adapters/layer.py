"""The Inter-Layer Adapter (ILA) module, down-sampling or not (Rios et al., 2024, arXiv 2409.11051).

Main branch (ILA_SPEC 1.2): Linear D->d, BN1d, GELU, split off the prefix (CLS) tokens, depth-wise
k x k conv on the patch grid (valid when down-sampling, "same" otherwise), BN2d, GELU, point-wise conv;
the prefix tokens get their own d x d linear map; concatenate, BN1d, GELU, Linear d->D, dropout.
Residual branch: identity for the prefix tokens; for the patch tokens a depth-wise valid k x k conv
initialised near ones (so about a 3x3 *sum*, not a mean) when down-sampling, identity otherwise.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..tokens import grid_to_tokens, split_prefix, tokens_to_grid
from .init import paper_linear_init_

__all__ = ["ILAdapter", "TokenBatchNorm"]


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over (B, N, C) tokens: statistics over batch x all tokens (prefix included)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class _ChannelLayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dim of a (B, C, H, W) grid (the ``norm="ln"`` option)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _token_norm(kind: str, dim: int) -> nn.Module:
    return {"bn": TokenBatchNorm, "ln": nn.LayerNorm}.get(kind, lambda _: nn.Identity())(dim)


def _grid_norm(kind: str, dim: int) -> nn.Module:
    return {"bn": nn.BatchNorm2d, "ln": _ChannelLayerNorm2d}.get(kind, lambda _: nn.Identity())(dim)


class ILAdapter(nn.Module):
    """Inter-Layer Adapter placed between two encoder blocks.

    Args:
        dim: token width D of the backbone.
        bottleneck_dim: width d of the adapter's bottleneck.
        kernel_size: k of the depth-wise convs.
        downsample: valid convs and a conv shortcut that shrink the grid side by k - 1.
        num_prefix_tokens: tokens before the patch grid (CLS, registers); from the model.
        norm: "bn" (paper), "ln" or "none".
        shortcut_init: "near_ones" (paper, N(1, 1e-3)), "ones" or "xavier".
        dropout: dropout on the main branch.
    """

    def __init__(
        self,
        dim: int,
        bottleneck_dim: int = 8,
        kernel_size: int = 3,
        downsample: bool = True,
        num_prefix_tokens: int = 1,
        norm: Literal["bn", "ln", "none"] = "bn",
        shortcut_init: Literal["near_ones", "ones", "xavier"] = "near_ones",
        dropout: float = 0.1,
        act_layer: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.kernel_size = kernel_size
        self.downsample = downsample
        self.num_prefix_tokens = num_prefix_tokens
        self.shortcut_init = shortcut_init
        padding = 0 if downsample else kernel_size // 2

        self.down = nn.Linear(dim, bottleneck_dim)
        self.norm1 = _token_norm(norm, bottleneck_dim)
        self.act = act_layer()
        self.dwconv = nn.Conv2d(bottleneck_dim, bottleneck_dim, kernel_size, padding=padding, groups=bottleneck_dim)
        self.norm2 = _grid_norm(norm, bottleneck_dim)
        self.pwconv = nn.Conv2d(bottleneck_dim, bottleneck_dim, 1)
        self.prefix_proj = nn.Linear(bottleneck_dim, bottleneck_dim)  # the paper's 1x1 conv on the CLS token
        self.norm3 = _token_norm(norm, bottleneck_dim)
        self.up = nn.Linear(bottleneck_dim, dim)
        self.drop = nn.Dropout(dropout)
        self.shortcut = nn.Conv2d(dim, dim, kernel_size, groups=dim, bias=False) if downsample else nn.Identity()
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Paper init: Xavier-uniform weights, linear biases ~ N(0, 1e-6), conv biases PyTorch default."""
        paper_linear_init_(self.down, self.up)
        for layer in (self.dwconv, self.pwconv, self.prefix_proj):
            layer.reset_parameters()  # default bias init, like a fresh nn.Conv2d
            nn.init.xavier_uniform_(layer.weight)
        if isinstance(self.shortcut, nn.Conv2d):
            if self.shortcut_init == "near_ones":
                nn.init.normal_(self.shortcut.weight, mean=1.0, std=1e-3)
            elif self.shortcut_init == "ones":
                nn.init.ones_(self.shortcut.weight)
            else:
                nn.init.xavier_uniform_(self.shortcut.weight)

    def out_side(self, side: int) -> int:
        """Grid side after this adapter for an input grid of ``side``."""
        return side - (self.kernel_size - 1) if self.downsample else side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, P + h*h, D) with P prefix tokens
        p = self.num_prefix_tokens
        t = self.act(self.norm1(self.down(x)))  # (B, N, d)
        t_prefix, t_patch = split_prefix(t, p)
        g = tokens_to_grid(t_patch)  # (B, d, h, h)
        g = self.pwconv(self.act(self.norm2(self.dwconv(g))))  # (B, d, h', h')
        t = torch.cat([self.prefix_proj(t_prefix), grid_to_tokens(g)], dim=1)  # (B, P + h'*h', d)
        t = self.drop(self.up(self.act(self.norm3(t))))  # (B, P + h'*h', D)

        if self.downsample:
            x_prefix, x_patch = split_prefix(x, p)
            x_patch = grid_to_tokens(self.shortcut(tokens_to_grid(x_patch)))  # prefix residual is identity
            x = torch.cat([x_prefix, x_patch], dim=1)
        return x + t

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kernel_size={self.kernel_size}, downsample={self.downsample}"
