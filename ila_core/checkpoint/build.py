"""Build models whose frozen backbone is reproducible, so a checkpoint reloads onto identical tensors."""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

import torch
from torch import nn

from ..adapters import ADAPTER_TYPES, MethodConfig, adapter_state_dict
from ..backbone import BuiltModel, build_model, reset_head
from ..config import BackboneConfig
from .format import RANDOM_INIT_SEED

_logger = logging.getLogger(__name__)
_BUILD_LOCK = threading.Lock()


# -- building ------------------------------------------------------------------------------------


def build_reproducible(
    backbone: BackboneConfig,
    method: MethodConfig,
    num_classes: int,
    *,
    data_dir: Path | None = None,
    drop_rate: float = 0.0,
) -> BuiltModel:
    """:func:`~ila_core.backbone.build_model` under a fixed seed, without touching the global RNG.

    Random-init backbones (``weights="none"``) must come out identical every time, or a checkpoint could not be
    reloaded onto "the same" backbone; pretrained ones are unaffected. Adapters and head are therefore identical
    too; training re-initialises them under its own seed (:func:`reinit_trainable`).
    """
    # the lock keeps two concurrent builds from interleaving the global RNG they both seed
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return build_model(backbone, method, num_classes, data_dir=data_dir, drop_rate=drop_rate)


@torch.no_grad()
def reinit_trainable(model: nn.Module) -> None:
    """Re-initialise adapter modules and the head from the current global RNG (the training seed)."""
    for module in model.modules():
        if isinstance(module, ADAPTER_TYPES) and hasattr(module, "init_weights"):
            module.init_weights()
    reset_head(model)


def _canonical(name: str) -> str:
    # Wrappers keep the original block as ``base_block``; the frozen tensor is the same with or without them.
    return name.replace(".base_block", "")


@torch.no_grad()
def backbone_fingerprint(model: nn.Module) -> str:
    """sha256 over the frozen backbone tensors (names without wrapper segments, dtype, shape, bytes).

    Identifies the backbone a checkpoint was trained on even when no weight file hash exists (random init,
    hub weights). Adapter and head tensors are excluded, so it does not change with training.
    """
    trained = set(adapter_state_dict(model))
    digest = hashlib.sha256()
    items = sorted((_canonical(k), v) for k, v in model.state_dict().items() if k not in trained)
    for name, tensor in items:
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def backbone_identity(built: BuiltModel) -> str:
    """Key of the frozen backbone for caches: the weight file's sha256 (plus how its position grid was resized),
    or, without a weight file, the fingerprint of the tensors themselves."""
    if not built.weights_sha256:
        return backbone_fingerprint(built.model)
    resize = getattr(built.backbone, "pos_embed_resize", "timm")
    return built.weights_sha256 if resize == "timm" else f"{built.weights_sha256}|pos:{resize}"
