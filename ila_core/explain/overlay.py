"""Blend a heatmap over a photo for the UI: colour-map the [0, 1] map and alpha-blend it onto the image.

Uses matplotlib's colormap objects only (no pyplot state). The heatmap is resized to the photo, so a map
computed at the model's input size can be laid over the original upload.
"""

from __future__ import annotations

from typing import Literal

import matplotlib
import numpy as np
from PIL import Image

__all__ = ["heatmap_to_rgb", "overlay", "overlay_in_window", "resize_heatmap"]

Colormap = Literal["jet", "inferno", "viridis", "magma", "turbo"]


def resize_heatmap(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an (H, W) float map to ``size`` = (width, height), as PIL orders it."""
    heatmap = np.ascontiguousarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (H, W), got shape {heatmap.shape}")
    if (heatmap.shape[1], heatmap.shape[0]) == tuple(size):
        return heatmap
    return np.asarray(Image.fromarray(heatmap).resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def heatmap_to_rgb(heatmap: np.ndarray, cmap: Colormap = "jet") -> np.ndarray:
    """(H, W) map in [0, 1] (clipped) -> (H, W, 3) uint8 colours."""
    if cmap not in matplotlib.colormaps:
        raise ValueError(f"unknown colormap {cmap!r}")
    values = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0), 0.0, 1.0)
    rgba = matplotlib.colormaps[cmap](values)  # (H, W, 4) floats
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)


def overlay(image: Image.Image, heatmap: np.ndarray, *, cmap: Colormap = "jet", alpha: float = 0.45) -> Image.Image:
    """Return ``image`` (converted to RGB) with ``heatmap`` colour-mapped and blended on top.

    Args:
        image: the photo; any size and mode.
        heatmap: (H, W) floats in [0, 1]; resized to the photo.
        cmap: matplotlib colormap name ("jet" or "inferno" are the UI's choices).
        alpha: weight of the heatmap colours, 0 = photo only, 1 = heatmap only.

    Returns:
        A new RGB image of the photo's size.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = image.convert("RGB")
    colours = heatmap_to_rgb(resize_heatmap(heatmap, base.size), cmap)
    blended = (1.0 - alpha) * np.asarray(base, dtype=np.float32) + alpha * colours.astype(np.float32)
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))


def overlay_in_window(
    image: Image.Image, heatmap: np.ndarray, window: tuple[float, float, float, float], *, cmap: Colormap = "jet",
    alpha: float = 0.45, dim: float = 0.55,
) -> Image.Image:  # fmt: skip
    """The whole photo, with ``heatmap`` blended inside the part the model saw and the rest dimmed.

    The model sees a square resize and a centre crop, so its map covers a window of the photo; showing the map
    on the whole photo (at its aspect ratio) keeps the leaf's tip and base in view instead of cropping them.

    Args:
        image: the photo; any size and mode.
        heatmap: (H, W) floats in [0, 1] over the model's input.
        window: (left, top, right, bottom) of the model's input in the photo, as fractions of its width/height.
        cmap: matplotlib colormap name.
        alpha: weight of the heatmap colours inside the window.
        dim: brightness kept outside the window (the model never saw those pixels).

    Returns:
        A new RGB image of the photo's size.
    """
    base = image.convert("RGB")
    w, h = base.size
    box = (round(window[0] * w), round(window[1] * h), round(window[2] * w), round(window[3] * h))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"empty window {window} on a {w}x{h} image")
    out = np.asarray(base, dtype=np.float32) * dim
    inside = base.crop(box)
    out[box[1] : box[3], box[0] : box[2]] = np.asarray(overlay(inside, heatmap, cmap=cmap, alpha=alpha), np.float32)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
