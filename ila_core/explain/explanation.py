"""One entry point for the UI and the CLI: ``explain(model, image, method=...) -> Explanation``.

Every method edits the model temporarily (hooks, a swapped last block, eval mode), restoring it before
returning. Run explanations on a model instance of your own -- e.g. the serving model loaded from its
checkpoint -- never on the instance a training worker is updating, whose blocks would be swapped under it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from .contrast import contrast_cam
from .gradcam import CamResult, grad_cam
from .rollout import attention_rollout

__all__ = ["EXPLAINERS", "Explanation", "Method", "explain", "explain_contrast", "explain_gradcam", "explain_rollout"]

Method = Literal["rollout", "gradcam", "contrast"]


@dataclass(frozen=True)
class Explanation:
    """A heatmap for one image, in the model input's pixel grid."""

    heatmap: np.ndarray  # (H, W) float32 in [0, 1]
    method: str
    target: int | None  # class explained; None for class-agnostic rollout
    other: int | None = None  # contrast only: the class A is contrasted against
    grid_side: int = 0  # token-grid side the map was computed at (label it in the UI: 10x10 is coarse)
    stage_maps: tuple[np.ndarray, ...] = ()  # rollout only: one (H, W) map per down-sampling stage
    stage_sides: tuple[int, ...] = ()  # rollout only: grid side of each stage
    logits: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))  # (K,) of the same forward

    @property
    def predicted(self) -> int:
        """Top-1 class of the forward that was explained."""
        return int(np.argmax(self.logits))


def _single(image: torch.Tensor) -> torch.Tensor:
    x = image.unsqueeze(0) if image.dim() == 3 else image
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"expected one image as (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
    return x


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def explain_rollout(
    model: nn.Module, image: torch.Tensor, *, target: int | None = None, other: int | None = None
) -> Explanation:
    """Attention rollout through the ILA stages (class-agnostic: ``target``/``other`` are ignored)."""
    res = attention_rollout(model, _single(image))
    return Explanation(
        heatmap=_np(res.combined[0]),
        method="rollout",
        target=None,
        grid_side=res.stage_sides[0],
        stage_maps=tuple(_np(m[0]) for m in res.stage_maps),
        stage_sides=tuple(res.stage_sides),
        logits=_np(res.logits[0]),
    )


def _from_cam(res: CamResult, method: str) -> Explanation:
    return Explanation(
        heatmap=_np(res.maps[0]),
        method=method,
        target=int(res.targets[0]),
        other=None if res.others is None else int(res.others[0]),
        grid_side=int(res.grid.shape[-1]),
        logits=_np(res.logits[0]),
    )


def explain_gradcam(
    model: nn.Module, image: torch.Tensor, *, target: int | None = None, other: int | None = None
) -> Explanation:
    """Grad-CAM for ``target`` (default: the predicted class); ``other`` is ignored."""
    return _from_cam(grad_cam(model, _single(image), target), "gradcam")


def explain_contrast(
    model: nn.Module, image: torch.Tensor, *, target: int | None = None, other: int | None = None
) -> Explanation:
    """Grad-CAM of ``logit[target] - logit[other]`` (defaults: top-1 and runner-up)."""
    return _from_cam(contrast_cam(model, _single(image), target, other), "contrast")


EXPLAINERS: dict[str, Callable[..., Explanation]] = {
    "rollout": explain_rollout,
    "gradcam": explain_gradcam,
    "contrast": explain_contrast,
}


def explain(
    model: nn.Module,
    image: torch.Tensor,
    *,
    method: Method = "gradcam",
    target: int | None = None,
    other: int | None = None,
) -> Explanation:
    """Explain the model's decision on one preprocessed image.

    Args:
        model: a timm ViT (adapters injected or not), on the image's device; temporarily edited.
        image: (3, H, W) or (1, 3, H, W) tensor, preprocessed as for prediction.
        method: "rollout", "gradcam" or "contrast".
        target: class to explain (default: the predicted class); ignored by rollout.
        other: contrast only, the class to contrast with (default: the runner-up).

    Raises:
        ValueError: unknown method, a batch of more than one image, or a bad class index.
    """
    if method not in EXPLAINERS:
        raise ValueError(f"unknown explanation method {method!r} ({', '.join(EXPLAINERS)})")
    return EXPLAINERS[method](model, image, target=target, other=other)
