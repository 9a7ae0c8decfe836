"""Per-iteration learning rate: linear warm-up, then one cosine cycle (timm ``CosineLRScheduler`` semantics).

The official code steps timm's cosine scheduler every iteration with ``warmup_prefix=False``: the warm-up
replaces the start of the cosine instead of delaying it, so after warm-up the rate continues on the cosine
computed over the whole run (ILA_SPEC 3). Written as a pure function so it is easy to test and to recompute
when a time budget shortens the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["CosineWarmup", "lr_at", "set_lr"]


def lr_at(step: int, *, base_lr: float, total_steps: int, warmup_steps: int, warmup_lr: float, min_lr: float) -> float:
    """Learning rate for 0-based iteration ``step``.

    Args:
        step: iterations done so far.
        base_lr: peak rate.
        total_steps: the cosine's length (epochs x iterations per epoch).
        warmup_steps: linear warm-up iterations from ``warmup_lr``.
        warmup_lr: rate at step 0.
        min_lr: rate at and after ``total_steps``.
    """
    if step < warmup_steps:
        return warmup_lr + step * (base_lr - warmup_lr) / warmup_steps
    if step >= total_steps:
        return min_lr
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * step / total_steps))


@dataclass
class CosineWarmup:
    """The schedule of one run; ``total_steps`` may be shortened when a time budget is hit."""

    base_lr: float
    total_steps: int
    warmup_steps: int
    warmup_lr: float
    min_lr: float

    def __call__(self, step: int) -> float:
        return lr_at(
            step,
            base_lr=self.base_lr,
            total_steps=max(1, self.total_steps),
            warmup_steps=self.warmup_steps,
            warmup_lr=self.warmup_lr,
            min_lr=self.min_lr,
        )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's rate: ``lr`` times the group's ``lr_scale`` (default 1)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
