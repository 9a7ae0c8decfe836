"""Temporarily put a model in eval mode (dropout off, BatchNorm running statistics), then restore its flag."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["eval_mode"]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block; the previous train flag is restored on exit, also after an exception.

    Only flips when the model is training: ``Module.train()`` walks every submodule, which costs about as
    much as a whole forward of a tiny model.
    """
    was_training = model.training
    if was_training:
        model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train(True)
