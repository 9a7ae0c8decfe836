"""How accepted images are written to the store: re-encoded without metadata, under content-addressed names."""

from __future__ import annotations

import io
import re

from .limits import LoadedImage

__all__ = ["encode_for_storage", "safe_stored_name", "storage_extension"]

_STORED_EXTENSIONS = frozenset({"png", "jpg"})
_SHA256 = re.compile(r"[0-9a-f]{64}")


def encode_for_storage(loaded: LoadedImage) -> bytes:
    """Re-encode a loaded image for the store: PNG, or JPEG quality 95 for JPEG sources; no EXIF/GPS/ICC.

    Args:
        loaded: the result of :func:`~ila_core.images.load_image`.

    Returns:
        The encoded bytes; :func:`storage_extension` names their file extension.
    """
    buf = io.BytesIO()
    if storage_extension(loaded) == "jpg":
        # 4:4:4 chroma keeps the fine venation colour edges that 4:2:0 would smear.
        loaded.image.save(buf, "JPEG", quality=95, subsampling=0)
    else:
        loaded.image.save(buf, "PNG")
    return buf.getvalue()


def storage_extension(loaded: LoadedImage) -> str:
    """File extension used by :func:`encode_for_storage` for this image ("jpg" or "png")."""
    return "jpg" if loaded.format in ("JPEG", "MPO") else "png"


def safe_stored_name(sha256: str, ext: str) -> str:
    """Content-addressed relative path ``ab/abcdef….ext``; user file names never become paths.

    Raises:
        ValueError: if ``sha256`` is not 64 lowercase hex digits or ``ext`` is not png/jpg.
    """
    ext = ext.lower().removeprefix(".")
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise ValueError("sha256 must be 64 lowercase hex digits")
    if ext not in _STORED_EXTENSIONS:
        raise ValueError(f"extension must be one of {sorted(_STORED_EXTENSIONS)}, got {ext!r}")
    return f"{sha256[:2]}/{sha256}.{ext}"
