"""Parameter-efficient methods for timm ViTs: ILA (Rios et al., 2024) and the paper's baselines."""

from .config import (
    VARIANTS,
    FullFinetuneConfig,
    ILAConfig,
    LinearProbeConfig,
    MethodConfig,
    ParallelAdapterConfig,
    VPTConfig,
    config_from_dict,
    config_to_dict,
    method_config,
    variant_name,
)
from .fused import FusedILAdapter, fuse_for_inference
from .inject import (
    ADAPTER_TYPES,
    ILABlock,
    adapter_state_dict,
    base_blocks,
    grid_sides,
    inject,
    load_adapter_state_dict,
    mark_trainable,
    trainable_names,
)
from .layer import ILAdapter
from .parallel import BottleneckAdapter, ConvPassAdapter, ParallelAdapterBlock
from .prompts import PromptBlock, PromptTokens

__all__ = [
    "VARIANTS",
    "FullFinetuneConfig",
    "ILAConfig",
    "LinearProbeConfig",
    "MethodConfig",
    "ParallelAdapterConfig",
    "VPTConfig",
    "config_from_dict",
    "config_to_dict",
    "method_config",
    "variant_name",
    "ADAPTER_TYPES",
    "ILABlock",
    "adapter_state_dict",
    "base_blocks",
    "grid_sides",
    "inject",
    "load_adapter_state_dict",
    "mark_trainable",
    "trainable_names",
    "ILAdapter",
    "FusedILAdapter",
    "fuse_for_inference",
    "BottleneckAdapter",
    "ConvPassAdapter",
    "ParallelAdapterBlock",
    "PromptBlock",
    "PromptTokens",
]
