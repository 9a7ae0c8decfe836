"""Decoding with the plugin allowlist: only the first frame, then EXIF orientation and the output downscale."""

from __future__ import annotations

import io
import logging

from PIL import Image, ImageOps

from .limits import BadImage, ImageLimits
from .sniff import _check_size

_logger = logging.getLogger(__name__)

# Pillow format names accepted, per sniffed container. MPO is how Pillow reports phone JPEGs that carry
# a second (depth/preview) picture; it comes through the JPEG plugin.
_PILLOW_FORMATS = {"JPEG": ("JPEG", "MPO"), "PNG": ("PNG",), "WEBP": ("WEBP",), "TIFF": ("TIFF",), "GIF": ("GIF",)}
# TIFF can route bytes into many codecs; only the common lossless ones are let through.
_TIFF_COMPRESSIONS = frozenset({"raw", "packbits", "tiff_lzw", "tiff_adobe_deflate", "tiff_deflate"})


def _decode_first_frame(
    raw: bytes, container: str, limits: ImageLimits, notes: list[str]
) -> tuple[Image.Image, str, tuple[int, int]]:
    """Open with the plugin allowlist, check the header size, then decode only the first frame.

    Returns:
        The decoded frame, Pillow's format name and the size stored in the file.
    """
    im = Image.open(io.BytesIO(raw), formats=list(_PILLOW_FORMATS[container]))
    if im.format not in _PILLOW_FORMATS[container]:
        raise BadImage(f"unsupported format: {im.format}")
    original_size = im.size
    _check_size(*original_size, limits)
    if container == "TIFF" and im.info.get("compression", "raw") not in _TIFF_COMPRESSIONS:
        raise BadImage(f"unsupported format: TIFF with {im.info.get('compression')} compression")
    if getattr(im, "n_frames", 1) > 1:
        kind = {"MPO": "multi-picture", "TIFF": "multi-page"}.get(im.format, "animated")
        notes.append(f"{kind}: first frame used")
        im.seek(0)
    if container == "JPEG":
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the image will be downscaled anyway.
        im.draft(im.mode, _target_size(original_size, limits.max_output_side))
    im.load()
    return im, im.format, original_size


def _orient(im: Image.Image, notes: list[str]) -> Image.Image:
    """Apply EXIF orientation; a malformed EXIF block is logged and the image used as stored."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception as exc:  # noqa: BLE001 - EXIF is attacker-controlled metadata; never fail the upload for it
        _logger.warning("EXIF orientation ignored (malformed EXIF): %r", exc)
        notes.append("EXIF orientation ignored (malformed EXIF)")
        return im


def _target_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    width, height = size
    longest = max(width, height)
    if longest <= max_side:
        return size
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _downscale(im: Image.Image, max_side: int, notes: list[str]) -> Image.Image:
    target = _target_size(im.size, max_side)
    if target == im.size:
        return im
    notes.append(f"downscaled to {target[0]}x{target[1]}")
    # reducing_gap does a cheap integer reduce first; visually identical at these ratios, much faster
    return im.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
