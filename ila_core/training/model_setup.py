"""Preparing the model a run trains: seeding, building, adapter init, sharing frozen tensors with another model."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..adapters import ADAPTER_TYPES, MethodConfig
from ..backbone import BuiltModel
from ..checkpoint import build_reproducible, reinit_trainable
from ..config import BackboneConfig
from .config import TrainConfig

__all__ = ["seed_everything", "prepare_model", "zero_adapter_outputs", "share_frozen_weights"]


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch, random and numpy; return a generator for DataLoaders."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def prepare_model(
    backbone: BackboneConfig,
    method: MethodConfig,
    num_classes: int,
    config: TrainConfig,
    *,
    data_dir: Path | None = None,
    share_from: nn.Module | None = None,
) -> BuiltModel:
    """Build the model a run trains: seeded adapters/head, the recipe's dropout, optionally a frozen CLS.

    Args:
        share_from: a model on the same backbone (e.g. the one being served) whose frozen tensors are reused
            instead of copied (they are never written).
    """
    if config.freeze_cls_token and hasattr(method, "train_cls_token"):
        method = dataclasses.replace(method, train_cls_token=False)
    if config.image_size is not None and config.image_size != backbone.image_size:
        backbone = dataclasses.replace(backbone, image_size=config.image_size)
    built = build_reproducible(backbone, method, num_classes, data_dir=data_dir, drop_rate=config.drop_rate)
    seed_everything(config.seed)
    reinit_trainable(built.model)
    if config.zero_init_adapter_output:
        zero_adapter_outputs(built.model)
    if share_from is not None:
        share_frozen_weights(share_from, built.model)
    return built


@torch.no_grad()
def zero_adapter_outputs(model: nn.Module) -> int:
    """Zero the last projection (``up``) of every adapter, so each starts as exactly its shortcut.

    Returns:
        How many projections were zeroed.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, ADAPTER_TYPES) and isinstance(getattr(module, "up", None), nn.Linear):
            nn.init.zeros_(module.up.weight)
            nn.init.zeros_(module.up.bias)
            count += 1
    return count


@torch.no_grad()
def share_frozen_weights(source: nn.Module, target: nn.Module) -> int:
    """Point ``target``'s frozen parameters at ``source``'s tensors (same name, shape, dtype, device).

    Returns:
        How many parameters now share storage.
    """
    canon = {n.replace(".base_block", ""): p for n, p in source.named_parameters() if not p.requires_grad}
    shared = 0
    for name, p in target.named_parameters():
        src = canon.get(name.replace(".base_block", ""))
        if p.requires_grad or src is None or src.shape != p.shape or src.dtype != p.dtype or src.device != p.device:
            continue
        if not torch.equal(src, p):
            raise ValueError(f"cannot share {name}: the source model has another backbone")
        p.data = src.data
        shared += 1
    return shared
