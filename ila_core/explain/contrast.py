"""Contrast maps, "why A and not B": Grad-CAM of the logit difference ``logit_A - logit_B``.

In ultra-fine-grained work the hard errors are between two look-alike cultivars, so the useful question
is which regions push the decision towards the winner *rather than* the runner-up. Grad-CAM of the
difference answers it: regions that support both classes equally cancel out. By default A is each
image's top-1 class and B its runner-up, both taken from the same forward that is explained.
"""

from __future__ import annotations

import torch
from torch import nn

from .gradcam import CamResult, cam_for_score, resolve_classes

__all__ = ["LogitDifference", "contrast_cam"]


class LogitDifference(nn.Module):
    """``model`` -> (B, 1) ``logit[a] - logit[b]``; None picks the top-1 (a) / runner-up (b) per image."""

    def __init__(
        self, model: nn.Module, a: int | torch.Tensor | None = None, b: int | torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.a, self.b = a, b
        self.logits: torch.Tensor | None = None
        self.targets: torch.Tensor | None = None
        self.others: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)  # (B, K)
        if logits.shape[1] < 2:
            raise ValueError("a contrast map needs a model with at least two classes")
        a = resolve_classes(self.a, logits, rank=0)
        if self.b is None:
            # runner-up relative to a: the best class other than a (a need not be the top-1)
            masked = logits.detach().clone()
            masked.scatter_(1, a[:, None], float("-inf"))
            b = masked.argmax(dim=1)
        else:
            b = resolve_classes(self.b, logits, rank=1)
        if bool((a == b).any()):
            raise ValueError("contrast needs two different classes")
        self.logits, self.targets, self.others = logits.detach(), a, b
        return logits.gather(1, a[:, None]) - logits.gather(1, b[:, None])  # (B, 1)


def contrast_cam(
    model: nn.Module,
    x: torch.Tensor,
    target: int | torch.Tensor | None = None,
    other: int | torch.Tensor | None = None,
) -> CamResult:
    """Grad-CAM of ``logit[target] - logit[other]``: evidence for ``target`` over ``other``.

    Args:
        model: a timm ViT with at least two classes; temporarily edited (use your own instance).
        x: (B, 3, H, W) preprocessed images.
        target: class A (default: top-1 per image).
        other: class B (default: the best class other than A per image).

    Raises:
        ValueError: fewer than two classes, or A == B.
    """
    return cam_for_score(model, LogitDifference(model, target, other), x)
