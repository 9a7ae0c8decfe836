"""Pretrained position embeddings on another patch grid, resized the way the official ILA code does.

timm resamples a checkpoint's absolute position table to the model's grid with antialiased bicubic
interpolation. The paper's code (ILA_SPEC 1.5) instead zooms the 14x14 grid of ViT-B/16 to 28x28 at 448 px
with ``scipy.ndimage.zoom(order=1)``: bilinear, with the default ``grid_mode=False``, which maps output pixel
``i`` to input coordinate ``i * (n_in - 1) / (n_out - 1)``, i.e. corner pixels land on corner pixels. That is
``F.interpolate(mode="bilinear", align_corners=True)``. Prefix entries (CLS) are kept as they are.

:func:`load_pretrained_bilinear` loads a model's pretrained weights through timm's own loader (file or hub,
head dropping, key remapping) and only swaps in this resize before timm's filter would resample.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["resize_pos_embed_bilinear", "load_pretrained_bilinear"]

_logger = logging.getLogger(__name__)


def resize_pos_embed_bilinear(pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
    """Resize a (1, P + h*w, D) position table to ``grid`` as ``scipy.ndimage.zoom(order=1)`` does.

    Args:
        pos_embed: the table; its patch part must be a square grid.
        grid: target (rows, cols).
        num_prefix_tokens: leading entries (CLS, registers) that are copied, not resized.

    Returns:
        A (1, P + rows*cols, D) table in the input dtype.

    Raises:
        ValueError: the patch part is not a square grid.
    """
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    side = int(round(patches.shape[1] ** 0.5))
    if side * side != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} position entries (after {num_prefix_tokens} prefix) are not a square")
    if (side, side) == tuple(grid):
        return pos_embed
    dim = patches.shape[-1]
    # float64 like scipy, which interpolates in double precision before casting back
    g = patches.to(torch.float64).reshape(1, side, side, dim).permute(0, 3, 1, 2)  # (1, h*w, D) -> (1, D, h, w)
    g = F.interpolate(g, size=tuple(grid), mode="bilinear", align_corners=True)
    patches = g.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim).to(pos_embed.dtype)  # -> (1, H*W, D)
    return torch.cat([prefix, patches], dim=1)


def _filter_bilinear(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    from timm.models.vision_transformer import checkpoint_filter_fn

    pos = state_dict.get("pos_embed")
    if pos is not None and pos.shape != model.pos_embed.shape:
        # timm's table holds prefix entries only when the model adds position to them (not no_embed_class)
        prefix = 0 if getattr(model, "no_embed_class", False) else int(model.num_prefix_tokens)
        grid = tuple(model.patch_embed.grid_size)
        state_dict = {**state_dict, "pos_embed": resize_pos_embed_bilinear(pos, grid, prefix)}
        _logger.info("position embedding resized bilinearly (align_corners) to %dx%d", *grid)
    # timm's filter still remaps keys; pos_embed already fits, so it is left alone
    return checkpoint_filter_fn(state_dict, model)


def load_pretrained_bilinear(model: nn.Module) -> None:
    """Load ``model.pretrained_cfg``'s weights with timm's loader, resizing ``pos_embed`` bilinearly.

    Raises:
        ValueError: ``model`` is not a timm ``VisionTransformer`` with an absolute position table.
    """
    from timm.models import load_pretrained
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer) or getattr(model, "pos_embed", None) is None:
        raise ValueError(f"bilinear position resizing needs a timm VisionTransformer, got {type(model).__name__}")
    kwargs: dict[str, Any] = {"num_classes": model.num_classes, "in_chans": model.patch_embed.proj.in_channels}
    load_pretrained(model, filter_fn=_filter_bilinear, strict=True, **kwargs)
