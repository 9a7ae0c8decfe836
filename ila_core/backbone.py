"""Build a timm ViT, load its frozen weights from the configured source, inject a method, freeze the rest.

Where the official ILA code prepares its ViT-B/16 differently from timm, the paper's backbone follows the
official code (see :class:`~ila_core.config.BackboneConfig`): ImageNet mean/std and a bilinear position grid
resize. Dropout in the frozen blocks (``drop_rate``) sits where the official blocks have it, after the attention
projection and after the MLP, not on the MLP's hidden layer (timm's ``mlp.drop1``).

One difference is kept on purpose: LayerNorm epsilon. The official code's own ViT uses 1e-12; timm, like the
original JAX ViT whose ImageNet-21k weights both load, uses 1e-6. Each normalised value then differs by a
relative ``eps / (2 * variance)``, about 5e-7 at unit variance, far below what the recipe's fp16 autocast
rounds away, so the backbone keeps timm's 1e-6 rather than rebuilding timm's norms (no fork of timm).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import timm
import timm.data
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
        kwargs, sha = {"pretrained": False}, None
    else:
        from . import weights  # conversion needs onnx; import only when weights are asked for

        if backbone.weights == "default":
            info = weights.ensure_default_weights(Path(data_dir or "data"))
        elif backbone.weights == "file":
            info = weights.file_weights(Path(backbone.weights_file), backbone.name)
        else:
            info = weights.hub_weights(backbone.name)
        kwargs, sha = weights.timm_pretrained_kwargs(info, img_size=backbone.image_size), info.sha256 or None
    if backbone.normalization == "imagenet":
        # recorded in the model's pretrained config, so timm.data.resolve_model_data_config (and through it
        # training, serving and the feature-cache keys) reports the normalisation the model was built for
        overlay = {**kwargs.get("pretrained_cfg_overlay", {}),
                   "mean": timm.data.IMAGENET_DEFAULT_MEAN, "std": timm.data.IMAGENET_DEFAULT_STD}  # fmt: skip
        kwargs = {**kwargs, "pretrained_cfg_overlay": overlay}
    return kwargs, sha


def _no_mlp_hidden_dropout(model: nn.Module) -> None:
    # timm's proj_drop_rate also drops after the MLP activation (mlp.drop1); the official blocks drop only
    # after the attention projection and after the MLP's output (ILA_SPEC 1.6)
    for block in getattr(model, "blocks", ()):
        mlp = getattr(block, "mlp", None)
        if mlp is not None and hasattr(mlp, "drop1"):
            mlp.drop1 = nn.Identity()


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
        backbone: timm model name, image size, weights source, normalisation and position-grid resize.
        method: the parameter-efficient method (see :mod:`ila_core.adapters`).
        num_classes: size of the new head.
        data_dir: where converted default weights live (``<data_dir>/weights``).
        drop_rate: dropout inside the frozen blocks, after the attention projection and after the MLP (the paper
            keeps 0.1 in training); the MLP's hidden layer is never dropped, as in the official code.

    Raises:
        ValueError: bad method placement for this backbone (see :func:`ila_core.adapters.inject`).
        ila_core.weights.WeightsError: missing or corrupt weight file, naming the file and the fix.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    kwargs, sha = _weights_kwargs(backbone, data_dir)
    pretrained = kwargs.pop("pretrained")
    # bilinear position resizing: build without weights, then load them through timm's loader with our resize
    bilinear = pretrained and backbone.pos_embed_resize == "bilinear"
    model = timm.create_model(
        backbone.name,
        pretrained=pretrained and not bilinear,
        img_size=backbone.image_size,
        num_classes=num_classes,
        proj_drop_rate=drop_rate,
        **kwargs,
    )
    if bilinear:
        from .pos_embed import load_pretrained_bilinear

        load_pretrained_bilinear(model)
    _no_mlp_hidden_dropout(model)
    reset_head(model)
    inject(model, method)
    return BuiltModel(model=model, backbone=backbone, method=method, num_classes=num_classes, weights_sha256=sha)
