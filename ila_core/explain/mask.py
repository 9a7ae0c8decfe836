"""A rough leaf foreground mask, and how much of an explanation falls outside it (background shortcuts).

The mask is deliberately simple and needs no model. The score per pixel is the excess green
``2G - R - B`` clipped at 0 (on 0-255 RGB): green and yellow-green leaves score high, while grey, white,
black and the warm browns and pinks of soil, wood or skin score zero. (Plain chroma/saturation was tried
first and takes brown soil for the leaf.) The score is lightly blurred and split in two with Otsu's
threshold (the cut that maximises the between-class variance of the 256-bin histogram); the high side is
the leaf, then a 3 x 3 opening drops specks and a closing fills pin-holes. When the two sides barely
differ (mean score gap below ``min_gap``), one side is almost empty, or the "leaf" covers most of the
image border (a leaf photo is framed by background, so this means the background is the green part), the
image cannot be split this way and the whole frame counts as leaf, so no warning is raised on a guess. It fails on green backgrounds
(grass, a green tray) and on brown, senescent leaves; treat it as a hint.
"""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["attribution_outside_mask", "leaf_mask", "otsu_threshold"]

_logger = logging.getLogger(__name__)

_WORK_SIDE = 256  # the mask is computed on a copy this size at most, then scaled back


def otsu_threshold(values: np.ndarray) -> int:
    """Otsu's threshold for uint8-range values: pixels ``> t`` form the upper class."""
    hist = np.bincount(np.clip(np.asarray(values).ravel(), 0, 255).astype(np.int64), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)  # pixels <= t
    m0 = np.cumsum(hist * levels)
    w1 = total - w0
    mean_all = m0[-1] / total
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_all * w0 - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    return int(np.argmax(between))


def leaf_mask(image: Image.Image, *, min_gap: float = 20.0, min_fraction: float = 0.02) -> np.ndarray:
    """Boolean (H, W) mask, True on the leaf, for ``image`` at its own size.

    Args:
        image: the photo, any mode.
        min_gap: minimum difference of mean score (0-255) between leaf and background to trust the split.
        min_fraction: each side must cover at least this share of the frame.
    """
    rgb = image.convert("RGB")
    work = rgb.copy()
    work.thumbnail((_WORK_SIDE, _WORK_SIDE), Image.Resampling.BILINEAR)
    arr = np.asarray(work, dtype=np.int16)
    excess_green = np.clip(2 * arr[..., 1] - arr[..., 0] - arr[..., 2], 0, 255).astype(np.uint8)  # (h, w)
    score = np.asarray(Image.fromarray(excess_green).filter(ImageFilter.BoxBlur(1)))
    t = otsu_threshold(score)
    fg = score > t
    fraction = float(fg.mean())
    gap = float(score[fg].mean() - score[~fg].mean()) if 0.0 < fraction < 1.0 else 0.0
    border = np.concatenate([fg[0], fg[-1], fg[:, 0], fg[:, -1]]).mean()
    if gap < min_gap or not min_fraction <= fraction <= 1.0 - min_fraction or border > 0.5:
        _logger.debug(
            "no clear leaf/background split (gap %.1f, leaf share %.3f, border %.2f); using the whole frame",
            gap,
            fraction,
            border,
        )
        return np.ones((rgb.height, rgb.width), dtype=bool)
    m = Image.fromarray(fg.astype(np.uint8) * 255)
    m = m.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.MaxFilter(3))  # opening: drop isolated specks
    m = m.filter(ImageFilter.MaxFilter(3)).filter(ImageFilter.MinFilter(3))  # closing: fill pin-holes
    m = m.resize(rgb.size, Image.Resampling.NEAREST)
    return np.asarray(m) > 127


def attribution_outside_mask(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the (non-negative) attribution mass of ``heatmap`` that lies where ``mask`` is False.

    The mask is resized (nearest) when its shape differs from the heatmap's. A map with no mass gives 0.
    """
    heat = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float64), nan=0.0), 0.0, None)
    mask = np.asarray(mask, dtype=bool)
    if heat.ndim != 2 or mask.ndim != 2:
        raise ValueError(f"heatmap and mask must be 2-D, got {heat.shape} and {mask.shape}")
    if mask.shape != heat.shape:
        m = Image.fromarray(mask.astype(np.uint8) * 255).resize(
            (heat.shape[1], heat.shape[0]), Image.Resampling.NEAREST
        )
        mask = np.asarray(m) > 127
    total = heat.sum()
    if total <= 0:
        return 0.0
    return float(heat[~mask].sum() / total)
