"""Every Pillow mode to 8-bit sRGB RGB: high-bit-depth grey stretched, ICC profiles applied, alpha composited."""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image, ImageCms

from .limits import BadImage

_logger = logging.getLogger(__name__)


def _to_rgb(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Every Pillow mode to RGB; alpha and palette transparency composited on ``background``."""
    mode = im.mode
    try:
        if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            im = _stretch_to_l(im)
        elif mode == "1":
            im = im.convert("L")
        im = _to_srgb(im)
        if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
            # Converting to RGBA first honours palette/grey tRNS without Pillow's "bytes transparency" warning.
            rgba = im.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (*background, 255))
            canvas.alpha_composite(rgba)
            return canvas.convert("RGB")
        return im if im.mode == "RGB" else im.convert("RGB")
    except ValueError as exc:
        raise BadImage(f"unsupported colour mode: {mode}") from exc


def _stretch_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit grey to 8-bit by the real min..max range; clipping would turn most 16-bit images white."""
    arr = np.asarray(im)
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
        lo, hi = int(arr.min()), int(arr.max())
        levels = np.arange(65536, dtype=np.float64)
        # a lookup table keeps memory at one byte per pixel, even for a 64 MP image
        lut = levels / 257.0 if hi == lo else (levels - lo) * (255.0 / (hi - lo))
        out = np.clip(lut, 0, 255).round().astype(np.uint8)[arr]
    else:
        values = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(values.min()), float(values.max())
        if hi > lo:
            values -= lo
            values *= 255.0 / (hi - lo)
        out = np.clip(values, 0, 255).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(out))


def _to_srgb(im: Image.Image) -> Image.Image:
    """Convert through an embedded ICC profile to sRGB (phone photos are often Display P3, print CMYK)."""
    icc = im.info.get("icc_profile")
    if not icc or im.mode not in ("RGB", "RGBA", "CMYK"):
        return im
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if "srgb" in ImageCms.getProfileDescription(source).lower().replace(" ", ""):
            return im
        out_mode = "RGBA" if im.mode == "RGBA" else "RGB"
        converted = ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode=out_mode)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        _logger.info("ICC profile ignored: %r", exc)
        return im
    return converted if converted is not None else im
