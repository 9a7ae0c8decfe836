"""Grad-CAM on a token model with captum's ``LayerGradCam``, through a temporary grid probe (STYLE item 11).

captum expects channels in dim 1 of a (B, C, H, W) layer, and a ViT block emits (B, N, D) tokens. So
``grid_probe`` temporarily wraps a module of the last block in ``nn.Sequential(module, GridProbe(...))``;
the probe's child ``grid = nn.Identity()`` sees the patch tokens as (B, D, H, W) and the probe hands the
tokens on unchanged. The original module is put back in ``finally``.

Where the probe sits (checked on synthetic data, see ``tests/test_explain.py``):

* Head reads the CLS token (timm ``global_pool="token"``, the default): the patch tokens *output* by the
  last block never reach the logits (the final norm is per token), so their gradient is exactly zero.
  The probe therefore wraps the last block's ``norm1``: it sees the layer-normalised tokens that the last
  attention reads -- pytorch-grad-cam's ViT recipe (``blocks[-1].norm1``). Not the raw residual stream
  entering the block: a pre-norm block is blind to the scale of its input, so gradient x activation there
  has no reliable sign (on our synthetic check it was often *negative* on the object).
* Average pooling: the output tokens feed the head, and the probe wraps the whole last block,
  ``nn.Sequential(model.blocks[-1], probe)``.

The grid comes from the token count minus the model's prefix tokens (and VPT prompts), never from the
configured size: after ILA down-sampling the last grid is smaller (ViT-B at 224: 14 -> 12 -> 10).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from captum.attr import LayerGradCam
from torch import nn

from ..adapters import ILABlock, base_blocks
from ..tokens import grid_to_tokens, split_prefix, tokens_to_grid
from .modes import eval_mode
from .recorder import non_patch_tokens
from .space import backproject, normalise01

__all__ = ["CamResult", "ClassScore", "GridProbe", "cam_for_score", "grad_cam", "grid_probe", "resolve_classes"]

_logger = logging.getLogger(__name__)


class GridProbe(nn.Module):
    """Identity on (B, N, D) tokens that routes the patch tokens through ``self.grid`` as (B, D, H, W).

    With ``centre=True`` the grid sees each channel minus its mean over the grid, and the mean is added
    back afterwards, so the tokens passed on (and the gradients reaching ``grid``) are unchanged.
    Grad-CAM was made for non-negative CNN features; token features are signed and carry a large
    location-independent part (LayerNorm's bias, the mean token), which only shifts every location of
    the map by the same amount and, after the ReLU, can wipe the whole map out. Centring removes that
    shift: the map shows where the evidence is above the image's average token.
    """

    def __init__(self, num_prefix_tokens: int, *, centre: bool = True) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.centre = centre
        self.grid = nn.Identity()  # captum's target layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prefix, patches = split_prefix(x, self.num_prefix_tokens)  # (B, P, D), (B, h*h, D)
        grid = tokens_to_grid(patches)  # (B, D, h, h)
        mean = grid.mean(dim=(2, 3), keepdim=True) if self.centre else torch.zeros_like(grid[:, :, :1, :1])
        grid = self.grid(grid - mean) + mean  # same values; the gradient w.r.t. grid's output is the tokens'
        return torch.cat([prefix, grid_to_tokens(grid)], dim=1)


def _probe_after(model: nn.Module) -> bool:
    return getattr(model, "global_pool", "token") != "token"


def _norm1_owner(model: nn.Module) -> nn.Module | None:
    blk = base_blocks(model)[-1]
    return blk if isinstance(getattr(blk, "norm1", None), nn.Module) else None


@contextmanager
def grid_probe(model: nn.Module) -> Iterator[GridProbe]:
    """Temporarily insert a :class:`GridProbe` at the last block (see the module docstring for where).

    Restores the swapped module on exit, also after an exception.
    """
    last = len(model.blocks) - 1
    owner = None if _probe_after(model) else _norm1_owner(model)
    if owner is None:
        original = model.blocks[last]
        probe = GridProbe(model.num_prefix_tokens)  # VPT strips its prompts inside the last block
        model.blocks[last] = nn.Sequential(original, probe)
        try:
            yield probe
        finally:
            model.blocks[last] = original
    else:
        original = owner.norm1
        probe = GridProbe(non_patch_tokens(model, last))
        owner.norm1 = nn.Sequential(original, probe)
        try:
            yield probe
        finally:
            owner.norm1 = original


class ClassScore(nn.Module):
    """``model`` -> (B, 1) logit of ``target`` (per image; None = the top-1 class of that same forward).

    Choosing the top-1 inside the forward saves the extra forward a separate prediction would cost.
    ``logits`` and ``targets`` of the last call are kept for the caller.
    """

    def __init__(self, model: nn.Module, target: int | torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        self.target = target
        self.logits: torch.Tensor | None = None
        self.targets: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)  # (B, K)
        targets = resolve_classes(self.target, logits, rank=0)
        self.logits, self.targets = logits.detach(), targets
        return logits.gather(1, targets[:, None])  # (B, 1)


def resolve_classes(target: int | torch.Tensor | None, logits: torch.Tensor, rank: int) -> torch.Tensor:
    """Per-image class indices: given ones broadcast to the batch, or the ``rank``-th best class."""
    b, k = logits.shape
    if target is None:
        if k <= rank:
            raise ValueError(f"the model has {k} classes; no class of rank {rank + 1}")
        return logits.detach().topk(rank + 1, dim=1).indices[:, rank]
    t = torch.as_tensor(target, device=logits.device, dtype=torch.long).reshape(-1).expand(b)
    if bool(((t < 0) | (t >= k)).any()):
        raise ValueError(f"target {target} outside 0..{k - 1}")
    return t


@dataclass(frozen=True)
class CamResult:
    """Grad-CAM maps for a batch."""

    maps: torch.Tensor  # (B, H, W) in [0, 1], image space
    grid: torch.Tensor  # (B, h, h) raw ReLU'd Grad-CAM on the probe grid
    sides: list[int]  # patch-grid sides from the first grid to the probe grid
    logits: torch.Tensor  # (B, K)
    targets: torch.Tensor  # (B,) class explained
    others: torch.Tensor | None = None  # (B,) class contrasted against (contrast maps only)


def _sides_to_probe(model: nn.Module, x: torch.Tensor, probe_side: int) -> list[int]:
    side = int(x.shape[-2]) // int(model.patch_embed.patch_size[0])
    sides = [side]
    blocks = list(model.blocks) if _probe_after(model) or _norm1_owner(model) is None else list(model.blocks)[:-1]
    for blk in blocks:
        while blk is not None:
            if isinstance(blk, ILABlock):
                side = blk.adapter.out_side(side)
            blk = getattr(blk, "base_block", None)
        if side != sides[-1]:
            sides.append(side)
    if sides[-1] != probe_side:
        _logger.warning("cannot trace grid sides %s to the probe grid %d; upsampling directly", sides, probe_side)
        return [probe_side]
    return sides


def cam_for_score(model: nn.Module, score: nn.Module, x: torch.Tensor) -> CamResult:
    """Grad-CAM of ``score(x)`` (a (B, 1) output computed from ``model``) on the last grid of ``model``.

    ``score`` must call ``model`` and keep the last logits and classes in ``score.logits`` /
    ``score.targets`` (and ``score.others`` for contrasts). The model is put in eval
    mode and restored; gradients are enabled locally, so a fully frozen model works (captum makes the
    probe's activation require grad). Do not call it under ``torch.inference_mode()``.
    """
    with eval_mode(model), torch.enable_grad(), grid_probe(model) as probe:
        cam = LayerGradCam(score, probe.grid)
        attr = cam.attribute(x, target=0, relu_attributions=True)  # (B, 1, h, h)
    grid = attr.detach().float().squeeze(1)
    sides = _sides_to_probe(model, x, int(grid.shape[-1]))
    base = backproject(grid, sides).unsqueeze(1)  # (B, 1, h0, h0)
    image = LayerGradCam.interpolate(base, (int(x.shape[-2]), int(x.shape[-1])), interpolate_mode="bilinear")
    others = getattr(score, "others", None)
    return CamResult(normalise01(image.squeeze(1)), grid, sides, score.logits, score.targets, others)


def grad_cam(model: nn.Module, x: torch.Tensor, target: int | torch.Tensor | None = None) -> CamResult:
    """Class Grad-CAM: where the evidence for ``target`` (default: each image's top-1 class) sits.

    Args:
        model: a timm ViT, adapters injected or not; temporarily edited (use your own instance).
        x: (B, 3, H, W) preprocessed images.
        target: class index for all images, a (B,) tensor of indices, or None for the predicted class.
    """
    return cam_for_score(model, ClassScore(model, target), x)
