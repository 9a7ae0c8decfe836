"""Build a timm ViT, load its frozen weights from the configured source, inject a method, freeze the rest."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from .adapters import MethodConfig, inject
from .adapters.init import paper_linear_init_
from .config import BackboneConfig

__all__ = ["BuiltModel", "build_model", "reset_head"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltModel:
    """A ready model and where its frozen weights came from (the hash goes into checkpoint manifests)."""

    model: nn.Module
    backbone: BackboneConfig
    method: MethodConfig
    num_classes: int
    weights_sha256: str | None  # None for random init or hub weights without a local file


@torch.no_grad()
def reset_head(model: nn.Module) -> None:
    """Paper init for the new classifier: Xavier-uniform weight, bias ~ N(0, 1e-6)."""
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        paper_linear_init_(head)


def _weights_kwargs(backbone: BackboneConfig, data_dir: Path | None) -> tuple[dict, str | None]:
    if backbone.weights == "none":
        return {"pretrained": False}, None
    from . import weights  # conversion needs onnx; import only when weights are asked for

    if backbone.weights == "default":
        info = weights.ensure_default_weights(Path(data_dir or "data"))
    elif backbone.weights == "file":
        info = weights.file_weights(Path(backbone.weights_file), backbone.name)
    else:
        info = weights.hub_weights(backbone.name)
    return weights.timm_pretrained_kwargs(info, img_size=backbone.image_size), info.sha256 or None


def build_model(
    backbone: BackboneConfig,
    method: MethodConfig,
    num_classes: int,
    *,
    data_dir: Path | None = None,
    drop_rate: float = 0.0,
) -> BuiltModel:
    """Create ``backbone`` with ``num_classes`` outputs, load its weights, inject ``method``, freeze.

    Args:
        backbone: timm model name, image size and weights source.
        method: the parameter-efficient method (see :mod:`ila_core.adapters`).
        num_classes: size of the new head.
        data_dir: where converted default weights live (``<data_dir>/weights``).
        drop_rate: dropout inside the frozen blocks (attention output and MLP; the paper keeps 0.1 in training).

    Raises:
        ValueError: bad method placement for this backbone (see :func:`ila_core.adapters.inject`).
        ila_core.weights.WeightsError: missing or corrupt weight file, naming the file and the fix.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    kwargs, sha = _weights_kwargs(backbone, data_dir)
    model = timm.create_model(
        backbone.name,
        img_size=backbone.image_size,
        num_classes=num_classes,
        proj_drop_rate=drop_rate,
        **kwargs,
    )
    reset_head(model)
    inject(model, method)
    return BuiltModel(model=model, backbone=backbone, method=method, num_classes=num_classes, weights_sha256=sha)
