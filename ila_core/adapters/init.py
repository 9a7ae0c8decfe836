"""The paper's initialisation of new Linear layers (ILA_SPEC 1.3): Xavier-uniform weights, biases ~ N(0, 1e-6)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["paper_linear_init_"]


@torch.no_grad()
def paper_linear_init_(*layers: nn.Linear) -> None:
    """Initialise each Linear in place the way the official code re-initialises every nn.Linear."""
    for lin in layers:
        nn.init.xavier_uniform_(lin.weight)
        if lin.bias is not None:
            nn.init.normal_(lin.bias, std=1e-6)
