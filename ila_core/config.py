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


@dataclass(frozen=True)
class BackboneConfig:
    """Which timm ViT to build and where its pretrained weights come from."""

    name: str = DEFAULT_BACKBONE
    image_size: int = 224
    weights: WeightsSource = "default"  # "none" = random init, only when asked for by name
    weights_file: Path | None = None  # for weights="file": a safetensors file of timm keys

    def __post_init__(self) -> None:
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
