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
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps

__all__ = [
    "BadImage",
    "ImageLimits",
    "LoadedImage",
    "load_image",
    "encode_for_storage",
    "storage_extension",
    "safe_stored_name",
]

_logger = logging.getLogger(__name__)

# Pillow format names accepted, per sniffed container. MPO is how Pillow reports phone JPEGs that carry
# a second (depth/preview) picture; it comes through the JPEG plugin.
_PILLOW_FORMATS = {"JPEG": ("JPEG", "MPO"), "PNG": ("PNG",), "WEBP": ("WEBP",), "TIFF": ("TIFF",), "GIF": ("GIF",)}
# TIFF can route bytes into many codecs; only the common lossless ones are let through.
_TIFF_COMPRESSIONS = frozenset({"raw", "packbits", "tiff_lzw", "tiff_adobe_deflate", "tiff_deflate"})
# Known formats that are refused by name, so the user learns what to convert.
_REFUSED_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"BM", 0, "BMP"),
    (b"%!PS", 0, "EPS"),
    (b"\xc5\xd0\xd3\xc6", 0, "EPS"),
    (b"8BPS", 0, "PSD"),
    (b"%PDF", 0, "PDF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", 0, "JPEG2000"),
    (b"\xffO\xffQ", 0, "JPEG2000"),
    (b"\x00\x00\x01\x00", 0, "ICO"),
    (b"\x00\x00\x02\x00", 0, "CUR"),
    (b"II+\x00", 0, "BigTIFF"),
    (b"MM\x00+", 0, "BigTIFF"),
    (b"qoif", 0, "QOI"),
    (b"DDS ", 0, "DDS"),
    (b"ftypavif", 4, "AVIF"),
)
_HEIC_BRANDS = (b"ftypheic", b"ftypheix", b"ftyphevc", b"ftypmif1", b"ftypmsf1")
_STORED_EXTENSIONS = frozenset({"png", "jpg"})
_SHA256 = re.compile(r"[0-9a-f]{64}")
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


class BadImage(ValueError):
    """The bytes are not an acceptable image; ``str(error)`` is a message fit to show the user."""


@dataclass(frozen=True)
class ImageLimits:
    """Caps applied by :func:`load_image`. The defaults accept a 9000x7000 photo and refuse 10000x10000."""

    max_bytes: int = 25_000_000  # size of the uploaded file
    max_side: int = 12_000  # longest side from the header, before decoding
    max_pixels: int = 64_000_000  # width * height from the header; below Pillow's bomb limit (89.5 MP)
    min_side: int = 16  # shortest side; smaller images carry no leaf detail
    max_output_side: int = 2048  # accepted images are downscaled so the longest side fits
    background: tuple[int, int, int] = (255, 255, 255)  # transparency is composited on this colour

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_side", "max_pixels", "min_side", "max_output_side"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.min_side > self.max_side:
            raise ValueError(f"min_side ({self.min_side}) must be <= max_side ({self.max_side})")
        if self.max_output_side < self.min_side:
            raise ValueError(f"max_output_side ({self.max_output_side}) must be >= min_side ({self.min_side})")
        if Image.MAX_IMAGE_PIXELS is not None and self.max_pixels > Image.MAX_IMAGE_PIXELS:
            raise ValueError(f"max_pixels must be <= Pillow's MAX_IMAGE_PIXELS ({Image.MAX_IMAGE_PIXELS})")
        bg = self.background
        if len(bg) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in bg):
            raise ValueError(f"background must be three ints in 0..255, got {bg!r}")


@dataclass(frozen=True)
class LoadedImage:
    """A validated image ready for the model and the store."""

    image: Image.Image  # mode "RGB", upright, longest side <= limits.max_output_side, no metadata
    sha256: str  # hex digest of the original bytes (the content address and duplicate key)
    format: str  # Pillow's name: JPEG, MPO, PNG, WEBP, TIFF or GIF
    width: int  # after orientation and downscaling
    height: int
    original_size: tuple[int, int]  # (width, height) as stored in the file, before orientation
    notes: tuple[str, ...] = field(default=())  # things the user may want to know ("animated: first frame used")


def load_image(data: bytes | Path, *, limits: ImageLimits = ImageLimits()) -> LoadedImage:
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


def encode_for_storage(loaded: LoadedImage) -> bytes:
    """Re-encode a loaded image for the store: PNG, or JPEG quality 95 for JPEG sources; no EXIF/GPS/ICC.

    Args:
        loaded: the result of :func:`load_image`.

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


def _read_capped(data: bytes | Path, max_bytes: int) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    elif isinstance(data, Path):
        size = data.stat().st_size
        if size > max_bytes:
            raise BadImage(f"file too large: {size / 1e6:.1f} MB > limit {max_bytes / 1e6:g} MB")
        with data.open("rb") as fh:
            raw = fh.read(max_bytes + 1)  # the file may have grown since stat()
    else:
        raise TypeError(f"load_image takes bytes or a Path, got {type(data).__name__}")
    if not raw:
        raise BadImage("empty file")
    if len(raw) > max_bytes:
        raise BadImage(f"file too large: {len(raw) / 1e6:.1f} MB > limit {max_bytes / 1e6:g} MB")
    return raw


def _sniff(raw: bytes) -> str:
    """Container format from the magic bytes, or BadImage naming what was refused."""
    if raw.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "WEBP"
    if raw[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if raw[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if raw[4:12] in _HEIC_BRANDS:
        raise BadImage("unsupported format: HEIC (export as JPEG)")
    for magic, offset, name in _REFUSED_MAGIC:
        if raw[offset : offset + len(magic)] == magic:
            raise BadImage(f"unsupported format: {name}")
    raise BadImage("not an image")


def _check_png_chunks(raw: bytes) -> None:
    """Walk the PNG chunks and verify every CRC; Pillow does not check the IDAT CRCs."""
    pos = 8
    while True:
        if pos + 12 > len(raw):
            raise BadImage("truncated or corrupt image")
        length, ctype = struct.unpack(">I4s", raw[pos : pos + 8])
        end = pos + 8 + length
        if end + 4 > len(raw):
            raise BadImage("truncated or corrupt image")
        (crc,) = struct.unpack(">I", raw[end : end + 4])
        if zlib.crc32(raw[pos + 4 : end]) != crc:
            raise BadImage("truncated or corrupt image")
        if ctype == b"IEND":
            return
        pos = end + 4


def _peek_size(raw: bytes, container: str) -> tuple[int, int] | None:
    """(width, height) straight from the header where it sits at a fixed offset (PNG IHDR, GIF screen)."""
    if container == "PNG" and raw[12:16] == b"IHDR":
        return struct.unpack(">II", raw[16:24])
    if container == "GIF" and len(raw) >= 10:
        return struct.unpack("<HH", raw[6:10])
    return None


def _check_size(width: int, height: int, limits: ImageLimits) -> None:
    if max(width, height) > limits.max_side:
        raise BadImage(f"image too large: {width}x{height} > limit {limits.max_side} px per side")
    if width * height > limits.max_pixels:
        raise BadImage(f"image too large: {width}x{height} > limit {limits.max_pixels / 1e6:g} MP")
    if min(width, height) < limits.min_side:
        raise BadImage(f"image too small: {width}x{height} < {limits.min_side} px")


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
    except Exception as exc:  # EXIF is attacker-controlled metadata; never fail the upload for it
        _logger.warning("EXIF orientation ignored (malformed EXIF): %r", exc)
        notes.append("EXIF orientation ignored (malformed EXIF)")
        return im


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
