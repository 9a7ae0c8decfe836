"""What serving hands the UI: the explanation methods offered, an explanation, an exemplar."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

__all__ = ["METHODS", "Exemplar", "Explained"]

METHODS = {"gradcam": "Grad-CAM", "rollout": "Attention rollout", "contrast": "Contrast vs runner-up"}


@dataclass(frozen=True)
class Explained:
    """An explanation ready for display."""

    view: Image.Image  # the whole photo at its aspect ratio (downscaled for display)
    overlay: Image.Image  # the same photo: heatmap inside the window the model saw, the rest dimmed
    method: str
    target: str | None  # cultivar explained (None for class-agnostic rollout)
    other: str | None  # contrast only
    outside_leaf: float  # share of attribution mass outside the leaf mask
    grid_side: int


@dataclass(frozen=True)
class Exemplar:
    """A confirmed image close to the query in the frozen feature space."""

    image_id: int
    cultivar: str
    similarity: float
    rel_path: str
