"""Parameter, token and MAC accounting for a model at a given image size.

MACs are counted with torch's ``FlopCounterMode`` (which reports FLOPs = 2 x MACs for matmuls and convs)
with fused attention switched off, because the counter does not see the fused CPU attention kernel. Like
the paper's counter (torchprofile), normalisations, activations and softmax are not counted as MACs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .adapters import MethodConfig, base_blocks
from .attention import fused_attention_off
from .config import BackboneConfig

__all__ = ["ModelStats", "count_parameters", "tokens_per_block", "count_macs", "model_stats", "stats_for"]


@dataclass(frozen=True)
class ModelStats:
    """What ``python -m ila_core info`` prints."""

    trainable_params: int
    total_params: int
    tokens_per_block: list[int]
    macs: int
    image_size: int

    def to_dict(self) -> dict:
        return asdict(self)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def _dummy(model: nn.Module, image_size: int, batch: int = 1) -> torch.Tensor:
    param = next(model.parameters())
    return torch.zeros(batch, 3, image_size, image_size, device=param.device, dtype=param.dtype)


@torch.no_grad()
def tokens_per_block(model: nn.Module, image_size: int) -> list[int]:
    """Sequence length (prefix tokens included) seen by each original block, measured by a forward."""
    seen: list[int] = []
    # hook the block's first norm: wrappers may call the block's parts rather than the block itself
    hooks = [b.norm1.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1])) for b in base_blocks(model)]
    was_training = model.training
    try:
        model.eval()
        model(_dummy(model, image_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return seen


@torch.no_grad()
def count_macs(model: nn.Module, image_size: int, batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass (matmuls and convolutions)."""
    was_training = model.training
    try:
        model.eval()
        with fused_attention_off(model), FlopCounterMode(display=False) as counter:
            model(_dummy(model, image_size, batch))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def model_stats(model: nn.Module, image_size: int) -> ModelStats:
    """Parameters, tokens per block and MACs at batch 1."""
    trainable, total = count_parameters(model)
    return ModelStats(
        trainable_params=trainable,
        total_params=total,
        tokens_per_block=tokens_per_block(model, image_size),
        macs=count_macs(model, image_size),
        image_size=image_size,
    )


def stats_for(backbone: BackboneConfig, method: MethodConfig, num_classes: int) -> ModelStats:
    """Stats of a configuration without allocating weights: the model is built on the meta device.

    Counts do not depend on weight values, so the weights source is ignored (nothing is loaded).
    """
    from .backbone import build_model

    with torch.device("meta"):
        built = build_model(dataclasses.replace(backbone, weights="none", weights_file=None), method, num_classes)
    return model_stats(built.model, backbone.image_size)
