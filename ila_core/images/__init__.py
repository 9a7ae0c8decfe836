"""The one safe door for image bytes: allowlist, size caps, EXIF orientation, every mode to RGB.

Everything that reaches the model, the store or the UI goes through :func:`load_image`. The order of
checks matters: byte cap -> format from the magic bytes -> header size caps -> decode -> orient ->
RGB -> downscale, so that nothing unknown is handed to a Pillow plugin and no pixel buffer is
allocated for an image that is too large (RELIABILITY.md facts 2-3, catalogue IMG-01..30).

Decisions worth knowing:

* ``sha256`` is the hash of the *original uploaded bytes*: uploading the same file twice is a
  duplicate; the same pixels with different metadata are not.
* Transparency is composited on a fixed background (white by default, ``ImageLimits.background``),
  so hidden pixels under alpha = 0 never reach the model.
* 16-bit and 32-bit grey are stretched to 8 bits by their real min..max range (not clipped, which
  would turn a 16-bit image white).
* Animated GIF/WebP/APNG, MPO and multi-page TIFF: the first frame is used and a note says so.

Modules: ``limits`` (the error, the caps, the result), ``sniff`` (checks on the raw bytes), ``decode``
(first frame, orientation, downscale), ``colour`` (every mode to sRGB RGB), ``loader`` (:func:`load_image`,
which runs them in order) and ``storage`` (re-encoding and content-addressed names).
"""

from __future__ import annotations

from .limits import BadImage, ImageLimits, LoadedImage
from .loader import load_image
from .sniff import sniff_container
from .storage import encode_for_storage, safe_stored_name, storage_extension

__all__ = [
    "BadImage",
    "ImageLimits",
    "LoadedImage",
    "encode_for_storage",
    "load_image",
    "safe_stored_name",
    "sniff_container",
    "storage_extension",
]
