"""Configs of the parameter-efficient methods: ILA (and its + / ++ variants) and the paper's baselines.

One frozen dataclass per method. ``method_config(variant)`` maps the names used by the CLI and the app
(``linear``, ``ila``, ``ila+``, ``ila++``, ``adapter``, ``convpass``, ``vpt-shallow``, ``vpt-deep``,
``full``) to configs; ``config_to_dict`` / ``config_from_dict`` persist them next to checkpoints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Union

__all__ = [
    "ILAConfig",
    "ParallelAdapterConfig",
    "VPTConfig",
    "LinearProbeConfig",
    "FullFinetuneConfig",
    "MethodConfig",
    "VARIANTS",
    "method_config",
    "config_to_dict",
    "config_from_dict",
]


def _check_locations(name: str, locations: tuple[int, ...]) -> None:
    if any(not isinstance(i, int) or i < 0 for i in locations):
        raise ValueError(f"{name} must be non-negative block indices, got {locations}")
    if len(set(locations)) != len(locations):
        raise ValueError(f"{name} has duplicates: {locations}")


@dataclass(frozen=True)
class ILAConfig:
    """Where and how Down-Sampling Inter-Layer Adapters are inserted (Rios et al., 2024).

    ``ds_locations`` get the down-sampling ILA after that block; ``locations`` get the non-down-sampling
    ILA (``"rest"`` = every other block, the ILA+ setting). ``parallel_adapters`` adds a bottleneck
    adapter parallel to MHSA and to the MLP in every block (the ILA++ setting).
    """

    ds_locations: tuple[int, ...] = (3, 7)  # adapter runs after these 0-based block indices
    locations: tuple[int, ...] | Literal["rest"] = ()  # non-down-sampling ILAs
    bottleneck_dim: int = 8
    kernel_size: int = 3  # valid conv: the patch grid side shrinks by kernel_size - 1 at each DS-ILA
    norm: Literal["bn", "ln", "none"] = "bn"
    shortcut_init: Literal["near_ones", "ones", "xavier"] = "near_ones"  # near ones ~ 3x3 sum-pool, not mean
    dropout: float = 0.1
    parallel_adapters: bool = False  # ILA++
    parallel_bottleneck_dim: int = 8
    train_cls_token: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "ds_locations", tuple(self.ds_locations))
        _check_locations("ds_locations", self.ds_locations)
        if self.locations != "rest":
            object.__setattr__(self, "locations", tuple(self.locations))
            _check_locations("locations", self.locations)
            both = set(self.locations) & set(self.ds_locations)
            if both:
                raise ValueError(f"blocks {sorted(both)} are in both locations and ds_locations")
        if self.bottleneck_dim < 1 or self.parallel_bottleneck_dim < 1:
            raise ValueError("bottleneck dims must be >= 1")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {self.kernel_size}")
        if self.norm not in ("bn", "ln", "none"):
            raise ValueError(f"norm must be bn, ln or none, got {self.norm!r}")
        if self.shortcut_init not in ("near_ones", "ones", "xavier"):
            raise ValueError(f"unknown shortcut_init {self.shortcut_init!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def resolved_locations(self, depth: int) -> tuple[int, ...]:
        """Non-down-sampling locations for a model of ``depth`` blocks."""
        if self.locations == "rest":
            return tuple(i for i in range(depth) if i not in self.ds_locations)
        return self.locations


@dataclass(frozen=True)
class ParallelAdapterConfig:
    """Bottleneck adapters parallel to MHSA and MLP in every block (ADPT) or their conv form (ConvPass)."""

    kind: Literal["adapter", "convpass"] = "adapter"
    bottleneck_dim: int = 8
    dropout: float = 0.1
    scale: float = 1.0
    train_cls_token: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("adapter", "convpass"):
            raise ValueError(f"kind must be adapter or convpass, got {self.kind!r}")
        if self.bottleneck_dim < 1:
            raise ValueError("bottleneck_dim must be >= 1")


@dataclass(frozen=True)
class VPTConfig:
    """Visual Prompt Tuning: learned prompt tokens after the prefix tokens (shallow) or at every block (deep)."""

    num_prompts: int = 100
    deep: bool = False
    dropout: float = 0.0  # on the prompt tokens in train mode; the "vpt-deep" variant uses the paper's 0.1
    train_cls_token: bool = True

    def __post_init__(self) -> None:
        if self.num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {self.num_prompts}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class LinearProbeConfig:
    """Frozen backbone; only the CLS token and the head train."""

    train_cls_token: bool = True


@dataclass(frozen=True)
class FullFinetuneConfig:
    """Every parameter trains (the costly reference point)."""


MethodConfig = Union[ILAConfig, ParallelAdapterConfig, VPTConfig, LinearProbeConfig, FullFinetuneConfig]

VARIANTS: dict[str, MethodConfig] = {
    "linear": LinearProbeConfig(),
    "ila": ILAConfig(),
    "ila+": ILAConfig(locations="rest"),
    "ila++": ILAConfig(parallel_adapters=True),
    "adapter": ParallelAdapterConfig(kind="adapter"),
    "convpass": ParallelAdapterConfig(kind="convpass"),
    "vpt-shallow": VPTConfig(deep=False),
    "vpt-deep": VPTConfig(deep=True, dropout=0.1),  # official code: each block's prompts get the 0.1 hidden dropout
    "full": FullFinetuneConfig(),
}

_TYPES = {cls.__name__: cls for cls in (ILAConfig, ParallelAdapterConfig, VPTConfig, LinearProbeConfig, FullFinetuneConfig)}


def method_config(variant: str, **overrides: Any) -> MethodConfig:
    """Config for a named variant, with field overrides (e.g. ``ds_locations=(1, 3)`` for a 6-block model)."""
    try:
        base = VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}") from None
    return dataclasses.replace(base, **overrides) if overrides else base


def config_to_dict(config: MethodConfig) -> dict[str, Any]:
    """JSON-ready dict with the config's type name under ``"type"``."""
    out: dict[str, Any] = {"type": type(config).__name__}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def config_from_dict(data: dict[str, Any]) -> MethodConfig:
    """Inverse of :func:`config_to_dict`; unknown types or fields raise ValueError."""
    data = dict(data)
    cls = _TYPES.get(data.pop("type", None))
    if cls is None:
        raise ValueError(f"unknown method config type in {data!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown fields for {cls.__name__}: {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def variant_name(config: MethodConfig) -> str:
    """Best-matching variant name for a config (for display); ``custom`` if none is equal."""
    for name, cfg in VARIANTS.items():
        if cfg == config:
            return name
    return "custom"
