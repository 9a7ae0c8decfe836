"""Temporarily turn off timm's fused attention on chosen blocks (needed to see attention maps and count FLOPs).

Per instance, inside a context manager, restored in ``finally`` -- never the global ``set_fused_attn``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["fused_attention_off"]


@contextmanager
def fused_attention_off(model: nn.Module) -> Iterator[list[nn.Module]]:
    """Set ``fused_attn = False`` on every attention module of ``model``; yields those modules."""
    changed: list[tuple[nn.Module, bool]] = []
    try:
        for module in model.modules():
            if hasattr(module, "fused_attn"):
                changed.append((module, module.fused_attn))
                module.fused_attn = False
        yield [m for m, _ in changed]
    finally:
        for module, old in changed:
            module.fused_attn = old
