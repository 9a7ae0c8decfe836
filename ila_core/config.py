"""Frozen configuration dataclasses shared by the library, the CLI and the app.

Method configs (ILA, adapters, VPT, ...) live in :mod:`ila_core.adapters.config`; this module holds
the backbone, training and app settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .adapters.config import VARIANTS, MethodConfig, method_config

__all__ = ["BackboneConfig", "AppConfig", "DEFAULT_BACKBONE", "PAPER_BACKBONE", "MethodConfig", "method_config", "VARIANTS"]

DEFAULT_BACKBONE = "vit_small_patch14_dinov2"  # DINOv2 ViT-S/14, weights shipped by a registry package
PAPER_BACKBONE = "vit_base_patch16_224.orig_in21k"  # the paper's ImageNet-21k ViT-B/16

WeightsSource = Literal["default", "hub", "file", "none"]
Normalization = Literal["auto", "timm", "imagenet"]
PosEmbedResize = Literal["auto", "timm", "bilinear"]


@dataclass(frozen=True)
class BackboneConfig:
    """Which timm ViT to build, where its pretrained weights come from and how its input is prepared.

    ``normalization`` and ``pos_embed_resize`` say "auto" by default and are resolved here, so the stored
    config (manifests, equality) always holds the concrete choice: the paper's backbone gets what the
    official ILA code does (ILA_SPEC 1.5, 3), every other backbone gets timm's own behaviour. After
    ``dataclasses.replace(cfg, name=...)`` pass "auto" again if the new name should decide.
    """

    name: str = DEFAULT_BACKBONE
    image_size: int = 224
    weights: WeightsSource = "default"  # "none" = random init, only when asked for by name
    weights_file: Path | None = None  # for weights="file": a safetensors file of timm keys
    # paper backbone: "imagenet", as the official code normalises (timm's orig_in21k config says mean = std = 0.5)
    normalization: Normalization = "auto"  # "timm": the model's timm data config; "imagenet": ImageNet mean/std
    # paper backbone: "bilinear" = scipy.ndimage.zoom(order=1) of the 14x14 grid (28x28 at 448 px)
    pos_embed_resize: PosEmbedResize = "auto"  # pretrained grid -> model grid; "timm": antialiased bicubic

    def __post_init__(self) -> None:
        if self.normalization not in ("auto", "timm", "imagenet"):
            raise ValueError(f"unknown normalization {self.normalization!r} (auto, timm, imagenet)")
        if self.pos_embed_resize not in ("auto", "timm", "bilinear"):
            raise ValueError(f"unknown pos_embed_resize {self.pos_embed_resize!r} (auto, timm, bilinear)")
        paper = self.name == PAPER_BACKBONE
        if self.normalization == "auto":
            object.__setattr__(self, "normalization", "imagenet" if paper else "timm")  # frozen: resolve once
        if self.pos_embed_resize == "auto":
            object.__setattr__(self, "pos_embed_resize", "bilinear" if paper else "timm")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.weights not in ("default", "hub", "file", "none"):
            raise ValueError(f"unknown weights source {self.weights!r} (default, hub, file, none)")
        if self.weights == "file" and self.weights_file is None:
            raise ValueError("weights='file' needs weights_file")
        if self.weights == "default" and self.name.split(".")[0] != DEFAULT_BACKBONE:
            raise ValueError(
                f"the shipped default weights are for {DEFAULT_BACKBONE}, not {self.name!r}; "
                "use weights='hub' or weights='file'"
            )


@dataclass(frozen=True)
class AppConfig:
    """Paths and server settings for the web app."""

    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 7860
    auth_file: Path | None = None
    max_file_size: str = "20mb"
    queue_size: int = 32

    def __post_init__(self) -> None:
        if self.host not in ("127.0.0.1", "localhost", "::1") and self.auth_file is None:
            raise ValueError(f"binding {self.host} needs --auth USERS_FILE (only loopback runs without login)")
