"""Put a method's modules into a timm ViT and choose, by module type, what trains.

``inject(model, config)`` edits ``model.blocks`` in place by wrapping blocks (the original block stays as
``base_block``, so timm's ``forward``, ``forward_head`` and ``reset_classifier`` keep working), then
``mark_trainable`` freezes everything except the method's modules, the CLS token and the head.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .config import FullFinetuneConfig, ILAConfig, LinearProbeConfig, MethodConfig, ParallelAdapterConfig, VPTConfig
from .layer import ILAdapter
from .parallel import BottleneckAdapter, ConvPassAdapter, ParallelAdapterBlock
from .prompts import PromptBlock, PromptTokens

__all__ = [
    "ILABlock",
    "ADAPTER_TYPES",
    "inject",
    "mark_trainable",
    "base_blocks",
    "grid_sides",
    "adapter_state_dict",
    "load_adapter_state_dict",
    "trainable_names",
]

_logger = logging.getLogger(__name__)

# Module types whose parameters train (structural freezing, never by name substring).
ADAPTER_TYPES: tuple[type[nn.Module], ...] = (ILAdapter, BottleneckAdapter, ConvPassAdapter, PromptTokens)


class ILABlock(nn.Module):
    """``base_block`` followed by an Inter-Layer Adapter."""

    def __init__(self, base_block: nn.Module, adapter: ILAdapter) -> None:
        super().__init__()
        self.base_block = base_block
        self.adapter = adapter

    def forward(self, x: torch.Tensor, **kwargs: object) -> torch.Tensor:
        return self.adapter(self.base_block(x, **kwargs))


def base_blocks(model: nn.Module) -> list[nn.Module]:
    """The original timm blocks, unwrapped from any adapter wrappers, in order."""
    out = []
    for blk in model.blocks:
        while hasattr(blk, "base_block"):
            blk = blk.base_block
        out.append(blk)
    return out


def _patch_grid(model: nn.Module) -> tuple[int, int]:
    grid = tuple(model.patch_embed.grid_size)
    if grid[0] != grid[1]:
        raise ValueError(f"ILA needs a square patch grid, the model has {grid[0]}x{grid[1]}")
    return grid


def grid_sides(model: nn.Module) -> list[int]:
    """Patch-grid side seen by each block at the model's configured image size."""
    side = _patch_grid(model)[0]
    sides = []
    for blk in model.blocks:
        sides.append(side)
        if isinstance(blk, ILABlock):
            side = blk.adapter.out_side(side)
    return sides


def _check_locations(model: nn.Module, what: str, locations: tuple[int, ...]) -> None:
    depth = len(model.blocks)
    bad = [i for i in locations if i >= depth]
    if bad:
        raise ValueError(f"{what} {bad} outside the model's depth {depth} (valid: 0..{depth - 1})")


def _inject_ila(model: nn.Module, cfg: ILAConfig) -> None:
    depth, dim, p = len(model.blocks), model.embed_dim, model.num_prefix_tokens
    locations = cfg.resolved_locations(depth)
    _check_locations(model, "ds_locations", cfg.ds_locations)
    _check_locations(model, "locations", locations)
    side, image = _patch_grid(model)[0], model.patch_embed.img_size
    for i in sorted(cfg.ds_locations):
        new_side = side - (cfg.kernel_size - 1)
        if new_side < 1:
            raise ValueError(
                f"at image size {image[0]} the patch grid ({side}x{side} before block {i}'s adapter) would shrink "
                f"below 1x1 with kernel {cfg.kernel_size}; use a larger image size or fewer ds_locations"
            )
        side = new_side
    for i in range(depth):
        blk = model.blocks[i]
        if cfg.parallel_adapters:
            blk = ParallelAdapterBlock(
                blk,
                BottleneckAdapter(dim, cfg.parallel_bottleneck_dim, cfg.dropout),
                BottleneckAdapter(dim, cfg.parallel_bottleneck_dim, cfg.dropout),
            )
        if i in cfg.ds_locations or i in locations:
            adapter = ILAdapter(
                dim,
                cfg.bottleneck_dim,
                cfg.kernel_size,
                downsample=i in cfg.ds_locations,
                num_prefix_tokens=p,
                norm=cfg.norm,
                shortcut_init=cfg.shortcut_init,
                dropout=cfg.dropout,
            )
            blk = ILABlock(blk, adapter)
        model.blocks[i] = blk


def _inject_parallel(model: nn.Module, cfg: ParallelAdapterConfig) -> None:
    dim, p = model.embed_dim, model.num_prefix_tokens

    def make() -> nn.Module:
        if cfg.kind == "convpass":
            return ConvPassAdapter(dim, cfg.bottleneck_dim, cfg.dropout, cfg.scale, num_prefix_tokens=p)
        return BottleneckAdapter(dim, cfg.bottleneck_dim, cfg.dropout, cfg.scale)

    for i in range(len(model.blocks)):
        model.blocks[i] = ParallelAdapterBlock(model.blocks[i], make(), make())


def _inject_vpt(model: nn.Module, cfg: VPTConfig) -> None:
    depth, dim, p = len(model.blocks), model.embed_dim, model.num_prefix_tokens
    patch = model.patch_embed.patch_size
    patch_dim = 3 * patch[0] * patch[1]
    for i in range(depth):
        has_prompts = i == 0 or cfg.deep
        prompts = PromptTokens(cfg.num_prompts, dim, patch_dim, cfg.dropout) if has_prompts else None
        model.blocks[i] = PromptBlock(model.blocks[i], prompts, p, cfg.num_prompts, insert=i == 0, strip=i == depth - 1)


def inject(model: nn.Module, config: MethodConfig) -> nn.Module:
    """Insert the modules of ``config`` into ``model`` (in place) and freeze the rest.

    Raises:
        ValueError: a location outside the model's depth, a grid that would shrink below 1x1 at the model's
            image size, or a model that is not a timm ViT with ``blocks``/``patch_embed``.
    """
    if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
        raise ValueError(f"{type(model).__name__} is not a timm VisionTransformer")
    if any(isinstance(b, (ILABlock, ParallelAdapterBlock, PromptBlock)) for b in model.blocks):
        raise ValueError("model already has adapters injected")
    if isinstance(config, ILAConfig):
        _inject_ila(model, config)
    elif isinstance(config, ParallelAdapterConfig):
        _inject_parallel(model, config)
    elif isinstance(config, VPTConfig):
        _inject_vpt(model, config)
    elif not isinstance(config, (LinearProbeConfig, FullFinetuneConfig)):
        raise ValueError(f"unsupported method config {type(config).__name__}")
    mark_trainable(model, config)
    return model


def mark_trainable(model: nn.Module, config: MethodConfig) -> None:
    """Freeze everything, then unfreeze adapter modules (by type), the CLS token and the head."""
    if isinstance(config, FullFinetuneConfig):
        model.requires_grad_(True)
        return
    model.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, ADAPTER_TYPES):
            module.requires_grad_(True)
    if getattr(config, "train_cls_token", False) and getattr(model, "cls_token", None) is not None:
        model.cls_token.requires_grad_(True)
    head = model.get_classifier()
    if isinstance(head, nn.Module):
        head.requires_grad_(True)


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the parameters that train."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint stores: trainable parameters plus the buffers of adapter modules (BN statistics)."""
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for name, module in model.named_modules():
        if isinstance(module, ADAPTER_TYPES):
            for bname, buf in module.named_buffers(recurse=True):
                state[f"{name}.{bname}"] = buf.detach().clone()
    return state


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load adapter/head tensors into a freshly built model.

    Raises:
        ValueError: unexpected keys, a missing trainable key, or a shape mismatch (the first one is named).
    """
    own = model.state_dict()
    expected = set(adapter_state_dict(model))
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise ValueError(f"unexpected key in adapter checkpoint: {unexpected[0]} ({len(unexpected)} in all)")
    missing = sorted(expected - set(state))
    if missing:
        raise ValueError(f"adapter checkpoint lacks key {missing[0]} ({len(missing)} in all)")
    for key, value in state.items():
        if tuple(own[key].shape) != tuple(value.shape):
            raise ValueError(f"shape mismatch for {key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}")
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys  # checked above
