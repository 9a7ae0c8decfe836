"""Checks on the raw bytes, before any Pillow plugin sees them: byte cap, magic bytes, PNG CRCs, header size.

Known formats that are not accepted are refused by name here, so the user learns what to convert and no
unknown bytes reach a decoder.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from .limits import BadImage, ImageLimits

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


def sniff_container(head: bytes) -> str:
    """Name the image container of a file from its first bytes (32 are plenty), without decoding anything.

    Returns:
        'JPEG', 'PNG', 'WEBP', 'TIFF' or 'GIF'.

    Raises:
        BadImage: empty, not an image, or a known format that is not accepted (named in the message).
    """
    if not head:
        raise BadImage("empty file")
    return _sniff(bytes(head))


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
