"""ILA Studio core: Down-Sampling Inter-Layer Adapters on frozen timm ViTs, and the tools around them."""

from .adapters import ILAConfig, ILAdapter, inject, method_config
from .backbone import BuiltModel, build_model
from .config import AppConfig, BackboneConfig

__all__ = ["ILAConfig", "ILAdapter", "inject", "method_config", "BuiltModel", "build_model", "AppConfig", "BackboneConfig"]
