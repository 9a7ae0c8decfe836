""":func:`load_image`: the checks of ``sniff``, ``decode`` and ``colour`` run in their safe order."""

from __future__ import annotations

import hashlib
import logging
import re
import warnings
from pathlib import Path

from PIL import Image, ImageFile

from .colour import _to_rgb
from .decode import _decode_first_frame, _downscale, _orient
from .limits import BadImage, ImageLimits, LoadedImage
from .sniff import _check_png_chunks, _check_size, _peek_size, _read_capped, _sniff

__all__ = ["load_image"]

_logger = logging.getLogger(__name__)

_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
_DEFAULT_LIMITS = ImageLimits()


def load_image(data: bytes | Path, *, limits: ImageLimits = _DEFAULT_LIMITS) -> LoadedImage:
    """Validate and decode untrusted image bytes into an upright RGB image.

    Args:
        data: the file's bytes, or a path to read them from (the file name is never interpreted).
        limits: byte, size and output caps.

    Returns:
        The decoded image with its hash, format, sizes and notes.

    Raises:
        BadImage: for anything that is not an acceptable image, with a message for the user.
        RuntimeError: if someone disabled Pillow's safety settings process-wide.
    """
    if Image.MAX_IMAGE_PIXELS is None or ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("Pillow safety settings were changed (MAX_IMAGE_PIXELS / LOAD_TRUNCATED_IMAGES)")
    raw = _read_capped(data, limits.max_bytes)
    container = _sniff(raw)
    if container == "PNG":
        _check_png_chunks(raw)
    peeked = _peek_size(raw, container)
    if peeked is not None:
        _check_size(*peeked, limits)

    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        # Inside the loader only: every warning is recorded (no leakage), bombs become errors.
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im, pillow_format, original_size = _decode_first_frame(raw, container, limits, notes)
            im = _orient(im, notes)
            im = _to_rgb(im, limits.background)
        except BadImage:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            match = _BOMB_PIXELS.search(str(exc))
            what = f"{int(match.group(1)):,} pixels" if match else "decompression bomb"
            raise BadImage(f"image too large: {what} > limit {limits.max_pixels / 1e6:g} MP") from exc
        except MemoryError as exc:
            raise BadImage("image too large to decode") from exc
        except Exception as exc:  # untrusted input: any decoder failure is the file's fault, not ours
            _logger.debug("decode failed: %r", exc, exc_info=True)
            raise BadImage("truncated or corrupt image") from exc
    for w in caught:
        _logger.info("Pillow warning while loading image: %s", w.message)

    im = _downscale(im, limits.max_output_side, notes)
    im.info = {}  # EXIF (GPS), ICC, comments: nothing from the upload travels further
    return LoadedImage(
        image=im,
        sha256=hashlib.sha256(raw).hexdigest(),
        format=pillow_format,
        width=im.width,
        height=im.height,
        original_size=original_size,
        notes=tuple(notes),
    )
