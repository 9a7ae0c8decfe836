"""Inference form of the Inter-Layer Adapter: eval-mode BatchNorms folded into their neighbours.

In eval mode each BatchNorm is a fixed per-channel affine map, so it folds exactly into the linear map
before it (``norm1`` into ``down``, ``norm2`` into ``dwconv``, ``norm3`` into both ``pwconv`` and
``prefix_proj``, whose outputs it normalises). The fused forward also keeps the grids as channels-last
views of the tokens, which the depth-wise convs take without a layout copy, turns the point-wise conv into a
linear map on tokens and adds the residual in place: about half the small ops of :class:`ILAdapter`. Outputs
equal the eval-mode :class:`ILAdapter` up to float rounding (a test checks 1e-5).

Fused adapters are for serving: their tensors are buffers, not parameters, and ``train()`` refuses.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..tokens import grid_side
from .layer import ILAdapter, TokenBatchNorm

__all__ = ["FusedILAdapter", "fuse_for_inference"]

_logger = logging.getLogger(__name__)


def _affine(norm: nn.Module, channels: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, shift) of an eval-mode BatchNorm or Identity; None for anything that does not fold (LayerNorm)."""
    if isinstance(norm, nn.Identity):
        return like.new_ones(channels), like.new_zeros(channels)
    if isinstance(norm, (TokenBatchNorm, nn.BatchNorm2d)) and norm.track_running_stats and norm.running_var is not None:
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.affine:
            scale = scale * norm.weight
        shift = -norm.running_mean * scale
        if norm.affine:
            shift = shift + norm.bias
        return scale, shift
    return None


def _bias(layer: nn.Module, channels: int, like: torch.Tensor) -> torch.Tensor:
    return layer.bias if layer.bias is not None else like.new_zeros(channels)


class FusedILAdapter(nn.Module):
    """An eval-mode :class:`ILAdapter` with its BatchNorms folded in; build with :meth:`from_adapter`."""

    def __init__(self, adapter: ILAdapter) -> None:
        super().__init__()
        a = adapter
        d = a.down.out_features
        w = a.down.weight
        folds = [_affine(n, d, w) for n in (a.norm1, a.norm2, a.norm3)]
        if any(f is None for f in folds):
            raise ValueError("only BatchNorm ('bn') or no norm ('none') folds; LayerNorm adapters stay unfused")
        (s1, c1), (s2, c2), (s3, c3) = folds  # type: ignore[misc]
        self.num_prefix_tokens = a.num_prefix_tokens
        self.kernel_size = a.kernel_size
        self.downsample = a.downsample
        self.act = a.act
        with torch.no_grad():
            self.register_buffer("down_w", a.down.weight * s1[:, None])
            self.register_buffer("down_b", _bias(a.down, d, w) * s1 + c1)
            self.register_buffer("dw_w", a.dwconv.weight * s2[:, None, None, None])
            self.register_buffer("dw_b", _bias(a.dwconv, d, w) * s2 + c2)
            self.register_buffer("pw_w", a.pwconv.weight.reshape(d, d) * s3[:, None])
            self.register_buffer("pw_b", _bias(a.pwconv, d, w) * s3 + c3)
            self.register_buffer("prefix_w", a.prefix_proj.weight * s3[:, None])
            self.register_buffer("prefix_b", _bias(a.prefix_proj, d, w) * s3 + c3)
            self.register_buffer("up_w", a.up.weight.clone())
            self.register_buffer("up_b", _bias(a.up, a.dim, w).clone())
            self.register_buffer("shortcut_w", a.shortcut.weight.clone() if a.downsample else None)

    @classmethod
    def from_adapter(cls, adapter: ILAdapter) -> FusedILAdapter:
        """Fold ``adapter``'s running statistics (it must be in eval mode) into a new fused module."""
        if adapter.training:
            raise ValueError("fuse an adapter in eval mode: train-mode BatchNorm uses batch statistics")
        return cls(adapter)

    def train(self, mode: bool = True) -> FusedILAdapter:
        if mode:
            raise RuntimeError("a fused ILA adapter is inference-only; build the model again to train it")
        return super().train(False)

    def out_side(self, side: int) -> int:
        """Grid side after this adapter for an input grid of ``side``."""
        return side - (self.kernel_size - 1) if self.downsample else side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        p, k = self.num_prefix_tokens, self.kernel_size
        h = grid_side(int(n) - p)  # int(): a plain number also under tracing
        o = self.out_side(h)
        t = self.act(F.linear(x, self.down_w, self.down_b))  # (B, N, d), norm1 folded
        grid = t[:, p:].reshape(b, h, h, -1).permute(0, 3, 1, 2)  # a view: channels-last strides
        pad = 0 if self.downsample else k // 2
        g = self.act(F.conv2d(grid, self.dw_w, self.dw_b, padding=pad, groups=grid.shape[1]))  # norm2 folded
        patch = F.linear(g.permute(0, 2, 3, 1).reshape(b, o * o, -1), self.pw_w, self.pw_b)  # 1x1 conv, norm3
        prefix = F.linear(t[:, :p], self.prefix_w, self.prefix_b)  # norm3 folded
        out = F.linear(self.act(torch.cat([prefix, patch], dim=1)), self.up_w, self.up_b)  # (B, P + o*o, D)
        if self.downsample:
            grid = x[:, p:].reshape(b, h, h, dim).permute(0, 3, 1, 2)  # channels-last view, no copy
            short = F.conv2d(grid, self.shortcut_w, groups=dim).permute(0, 2, 3, 1).reshape(b, o * o, dim)
            residual = torch.cat([x[:, :p], short], dim=1)
        else:
            residual = x
        return out.add_(residual)  # out is fresh (F.linear's output is not needed by its backward)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, downsample={self.downsample}, fused=True"


def fuse_for_inference(model: nn.Module) -> int:
    """Swap every eval-mode ILA adapter inside ``model`` for its fused form, in place; returns how many.

    The model must be in eval mode and stay there (fused adapters refuse ``train()``). Adapters that cannot
    fold (LayerNorm) are left as they are.
    """
    if model.training:
        raise ValueError("fuse_for_inference needs a model in eval mode")
    fused = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ILAdapter):
                try:
                    setattr(parent, name, FusedILAdapter.from_adapter(child))
                except ValueError as exc:
                    _logger.debug("adapter %s left unfused: %s", name, exc)
                    continue
                fused += 1
    return fused
