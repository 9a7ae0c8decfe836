"""Tests for ila_core.images: the bad-input catalogue IMG-01..30 (RELIABILITY.md 6.1) at the loader layer."""

from __future__ import annotations

import io
import logging
import resource
import struct
import time
import tracemalloc
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps

from ila_core import images
from ila_core.images import BadImage, ImageLimits, LoadedImage, encode_for_storage, load_image, safe_stored_name

RED = (255, 0, 0)


def _encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG chunk sequence whose IHDR claims width x height but holds almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _jpeg_with_size(width: int, height: int) -> bytes:
    """A real 16x16 JPEG whose SOF0 marker is patched to claim width x height."""
    data = bytearray(_encode(Image.new("RGB", (16, 16), RED), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _noise(size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = len(Image.new(mode, (1, 1)).getbands())
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(arr.squeeze(-1) if channels == 1 else arr)


def _with_orientation(im: Image.Image, fmt: str, orientation: int, **kwargs) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(im, fmt, exif=exif.tobytes(), **kwargs)


def test_empty_file_is_rejected():
    """IMG-01: 0 bytes -> 'empty file'."""
    with pytest.raises(BadImage, match="empty file"):
        load_image(b"")


def test_empty_path_is_rejected(tmp_path):
    """IMG-01: a 0-byte leaf.jpg on disk -> 'empty file'."""
    path = tmp_path / "leaf.jpg"
    path.write_bytes(b"")
    with pytest.raises(BadImage, match="empty file"):
        load_image(path)


def test_text_named_jpg_is_not_an_image(tmp_path):
    """IMG-02: UTF-8 text renamed .jpg -> 'not an image' (the name is never trusted)."""
    path = tmp_path / "leaf.jpg"
    path.write_text("Grüße, this is a leaf description\n", encoding="utf-8")
    with pytest.raises(BadImage, match="not an image"):
        load_image(path)


@pytest.mark.parametrize(
    "payload",
    [
        b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect width="9" height="9"/></svg>',
        b'<?xml version="1.0"?>\n<svg onload="fetch(1)"></svg>',
        b"\xef\xbb\xbf<html><script>alert(1)</script></html>",
    ],
)
def test_svg_and_html_are_not_images(payload):
    """IMG-03: SVG with an onload script and HTML are refused as 'not an image'."""
    with pytest.raises(BadImage, match="not an image"):
        load_image(payload)


def test_html_jpeg_polyglot_is_reencoded_without_the_html():
    """IMG-04: a JPEG carrying HTML in a comment decodes, and the stored copy has no trace of the HTML."""
    html = b"<html><script>alert(document.cookie)</script></html>"
    data = _encode(Image.new("RGB", (32, 32), RED), "JPEG", comment=html)
    assert html in data
    loaded = load_image(data)
    stored = encode_for_storage(loaded)
    assert b"<script" not in stored and stored.startswith(b"\xff\xd8\xff")


def test_truncated_jpeg_is_rejected():
    """IMG-05: a JPEG cut at 50 % -> 'truncated or corrupt', never a half grey image."""
    data = _encode(_noise((128, 128)), "JPEG", quality=90)
    with pytest.raises(BadImage, match="truncated or corrupt"):
        load_image(data[: len(data) // 2])


def test_png_with_bad_idat_crc_is_rejected():
    """IMG-06: a flipped byte inside IDAT (CRC no longer matches) -> 'truncated or corrupt'."""
    data = bytearray(_encode(_noise((32, 32)), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF
    with pytest.raises(BadImage, match="truncated or corrupt"):
        load_image(bytes(data))


def test_png_with_broken_zlib_stream_is_rejected():
    """IMG-06: an IDAT with valid CRC but a garbage zlib stream -> 'truncated or corrupt'."""
    ihdr = struct.pack(">IIBBBBB", 32, 32, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"\x78\x9c" + b"\xff" * 40)
    data += _chunk(b"IEND", b"")
    with pytest.raises(BadImage, match="truncated or corrupt"):
        load_image(data)


def test_huge_png_header_is_rejected_before_allocation(monkeypatch):
    """IMG-07: a 20000x20000 IHDR is refused from the header: fast, no decode, small peak memory."""
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or None)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(BadImage, match=r"image too large: 20000x20000 > limit"):
            load_image(_png_header_only(20_000, 20_000))
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoded == []
    assert elapsed < 1.0
    assert peak < 5_000_000
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 200_000  # KiB on Linux


def test_warning_zone_png_is_rejected_by_the_app_cap():
    """IMG-08: 10000x10000 (Pillow only warns) is refused by our own pixel cap."""
    with pytest.raises(BadImage, match=r"image too large: 10000x10000 > limit 64 MP"):
        load_image(_png_header_only(10_000, 10_000))


def test_warning_zone_jpeg_is_rejected():
    """IMG-08: a JPEG header claiming 10000x10000 (no fixed-offset size) is refused as too large."""
    with pytest.raises(BadImage, match="image too large"):
        load_image(_jpeg_with_size(10_000, 10_000))


def test_decompression_bomb_warning_is_an_error_inside_the_loader_only():
    """CFG-03: Pillow's bomb warning becomes a BadImage in the loader, and the global filters are untouched."""
    filters_before = list(warnings.filters)
    limits = ImageLimits(max_side=60_000, max_pixels=Image.MAX_IMAGE_PIXELS)
    with pytest.raises(BadImage, match=r"image too large: 100,000,000 pixels"):
        load_image(_jpeg_with_size(10_000, 10_000), limits=limits)
    assert warnings.filters == filters_before
    assert Image.MAX_IMAGE_PIXELS is not None and ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("size", [(1, 200_000_000), (200_000_000, 1)])
def test_extreme_aspect_headers_are_rejected(size):
    """IMG-09: 1x200,000,000 and 200,000,000x1 headers are refused."""
    with pytest.raises(BadImage, match="image too large"):
        load_image(_png_header_only(*size))


def test_large_legal_jpeg_is_downscaled_quickly():
    """IMG-10: a real 9000x7000 JPEG is accepted, downscaled to the output cap, in well under 3 s."""
    data = _encode(Image.new("RGB", (9000, 7000), (20, 140, 40)), "JPEG", quality=80)
    start = time.perf_counter()
    loaded = load_image(data)
    assert time.perf_counter() - start < 3.0
    assert loaded.original_size == (9000, 7000)
    assert (loaded.width, loaded.height) == (2048, 1593) == loaded.image.size
    assert any(note.startswith("downscaled") for note in loaded.notes)


def test_png_is_downscaled_to_a_configured_cap():
    """IMG-10: the output cap is configurable and keeps the aspect ratio."""
    loaded = load_image(_encode(_noise((200, 100)), "PNG"), limits=ImageLimits(max_output_side=64))
    assert loaded.image.size == (64, 32)


@pytest.mark.parametrize("size", [(1, 1), (8, 8), (200, 8)])
def test_tiny_images_are_rejected(size):
    """IMG-11: sides below the minimum -> 'image too small'."""
    with pytest.raises(BadImage, match=rf"image too small: {size[0]}x{size[1]} < 16 px"):
        load_image(_encode(Image.new("RGB", size, RED), "PNG"))


def test_cmyk_jpeg_becomes_rgb_with_the_right_colour():
    """IMG-12: a CMYK JPEG of pure red (C0 M255 Y255 K0) loads as RGB red."""
    loaded = load_image(_encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95))
    assert loaded.image.mode == "RGB"
    assert np.abs(np.asarray(loaded.image, dtype=int) - RED).max() < 8


def _gradient16(dtype: str) -> Image.Image:
    return Image.fromarray(np.tile(np.linspace(0, 65535, 64), (32, 1)).astype(dtype))


def _assert_grey_gradient(loaded: LoadedImage) -> None:
    arr = np.asarray(loaded.image, dtype=int)
    assert loaded.image.mode == "RGB"
    assert (arr > 242).mean() < 0.95  # not the all-white image that clipping produces
    assert arr[:, 0].max() < 10 and arr[:, -1].min() > 245  # the full range survives
    assert np.all(np.diff(arr[0, :, 0]) >= 0)


def test_16bit_grey_png_gradient_is_not_white():
    """IMG-13: a 16-bit grey PNG gradient keeps its gradient after conversion."""
    _assert_grey_gradient(load_image(_encode(_gradient16("<u2"), "PNG")))


def test_16bit_big_endian_tiff_is_scaled():
    """IMG-14: an I;16B TIFF converts without errors and keeps its gradient."""
    image = _gradient16(">u2")
    assert image.mode == "I;16B"
    _assert_grey_gradient(load_image(_encode(image, "TIFF")))


def test_32bit_int_tiff_is_scaled_by_its_range():
    """IMG-14: mode I with values far beyond 255 is stretched, not clipped."""
    arr = np.tile(np.linspace(100_000, 900_000, 64), (32, 1)).astype(np.int32)
    loaded = load_image(_encode(Image.fromarray(arr), "TIFF"))
    values = np.asarray(loaded.image)[0, :, 0]
    assert values[0] == 0 and values[-1] == 255


def test_transparent_pixels_show_the_background():
    """IMG-15: red pixels hidden under alpha 0 come out as the white background."""
    image = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    image.paste((0, 0, 255, 255), (0, 0, 8, 8))
    arr = np.asarray(load_image(_encode(image, "PNG")).image)
    assert tuple(arr[20, 20]) == (255, 255, 255)
    assert tuple(arr[2, 2]) == (0, 0, 255)


def test_background_colour_is_configurable():
    """IMG-15: the fixed background comes from ImageLimits."""
    image = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    loaded = load_image(_encode(image, "PNG"), limits=ImageLimits(background=(0, 0, 0)))
    assert loaded.image.getpixel((5, 5)) == (0, 0, 0)


def test_palette_png_with_trns_converts_without_warnings():
    """IMG-16: a palette PNG with tRNS: transparent index -> background, opaque colours kept, no warning leaks."""
    image = Image.new("P", (32, 32), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 16, 32))
    data = _encode(image, "PNG", transparency=bytes([0, 255]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_image(data)
    assert caught == []
    assert loaded.image.getpixel((4, 4)) == RED
    assert loaded.image.getpixel((28, 4)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["L", "LA", "1", "P"])
def test_grey_and_palette_modes_become_three_channels(mode):
    """IMG-17: L, LA, 1 and P images come out as (H, W, 3) RGB."""
    loaded = load_image(_encode(Image.new(mode, (40, 24)), "PNG"))
    assert loaded.image.mode == "RGB"
    assert np.asarray(loaded.image).shape == (24, 40, 3)


def _frames() -> list[Image.Image]:
    return [Image.new("RGB", (32, 32), colour) for colour in (RED, (0, 255, 0), (0, 0, 255))]


def test_animated_gif_uses_first_frame():
    """IMG-18: a 3-frame GIF -> first frame (red) with the note 'animated: first frame used'."""
    first, *rest = _frames()
    loaded = load_image(_encode(first, "GIF", save_all=True, append_images=rest, duration=100))
    assert loaded.image.getpixel((16, 16)) == RED
    assert "animated: first frame used" in loaded.notes


def test_animated_webp_uses_first_frame():
    """IMG-19: an animated WebP follows the GIF policy."""
    first, *rest = _frames()
    data = _encode(first, "WEBP", save_all=True, append_images=rest, duration=100, lossless=True)
    loaded = load_image(data)
    assert loaded.format == "WEBP"
    assert loaded.image.getpixel((16, 16)) == RED
    assert "animated: first frame used" in loaded.notes


@pytest.mark.parametrize("orientation, marker_at", [(6, (299, 0)), (8, (0, 399))])
def test_exif_orientation_is_applied(orientation, marker_at):
    """IMG-20: 400x300 JPEGs with orientation 6/8 load as 300x400, upright (the top-left marker moves)."""
    image = Image.new("RGB", (400, 300), (0, 0, 0))
    image.paste(RED, (0, 0, 40, 40))
    loaded = load_image(_with_orientation(image, "JPEG", orientation, quality=95))
    assert loaded.image.size == (300, 400) == (loaded.width, loaded.height)
    assert loaded.original_size == (400, 300)
    x, y = marker_at
    corner = loaded.image.getpixel((min(max(x, 10), 289), min(max(y, 10), 389)))
    assert corner[0] > 200 and corner[1] < 60


def test_malformed_exif_still_loads():
    """IMG-21: a JPEG whose EXIF block is garbage still loads."""
    data = _encode(Image.new("RGB", (32, 32), RED), "JPEG", exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x00garbage")
    assert load_image(data).image.size == (32, 32)


def test_orientation_failure_is_logged_not_raised(monkeypatch, caplog):
    """IMG-21: if applying EXIF orientation raises, the image is used as stored and the failure is logged."""

    def broken(_image):
        raise SyntaxError("bad EXIF IFD")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    with caplog.at_level(logging.WARNING, logger="ila_core.images"):
        loaded = load_image(_encode(Image.new("RGB", (40, 20), RED), "JPEG"))
    assert loaded.image.size == (40, 20)
    assert "EXIF orientation ignored" in caplog.text
    assert any("EXIF orientation ignored" in note for note in loaded.notes)


def test_mpo_uses_first_frame():
    """IMG-22: a two-frame phone MPO is accepted as JPEG-family; the first frame is used."""
    first, second, _ = _frames()
    loaded = load_image(_encode(first, "MPO", save_all=True, append_images=[second]))
    assert loaded.format == "MPO"
    assert np.abs(np.asarray(loaded.image, dtype=int) - RED).max() < 8
    assert "multi-picture: first frame used" in loaded.notes


def test_heic_is_refused_with_advice():
    """IMG-23: HEIC bytes -> 'HEIC not supported, export as JPEG'."""
    with pytest.raises(BadImage, match=r"unsupported format: HEIC \(export as JPEG\)"):
        load_image(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)


def _refused_samples() -> dict[str, bytes]:
    small = Image.new("RGB", (32, 32), RED)
    return {
        "BMP": _encode(small, "BMP"),
        "EPS": _encode(small, "EPS"),
        "PDF": _encode(small, "PDF"),
        "ICO": _encode(small, "ICO"),
        "PSD": b"8BPS\x00\x01" + b"\x00" * 64,
        "JPEG2000": b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 64,
        "BigTIFF": b"II+\x00\x08\x00\x00\x00" + b"\x00" * 64,
    }


@pytest.mark.parametrize("name", sorted(_refused_samples()))
def test_refused_formats_never_reach_pillow(name, monkeypatch):
    """IMG-24: BMP/EPS/PDF/ICO/PSD/JPEG2000/BigTIFF are refused by name before any plugin runs."""
    data = _refused_samples()[name]
    opened = []
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: opened.append(args))
    with pytest.raises(BadImage, match=rf"unsupported format: {name}"):
        load_image(data)
    assert opened == []


def test_tiff_with_exotic_compression_is_refused():
    """IMG-24: TIFF is allowed only with baseline-ish lossless compression."""
    data = _encode(Image.new("RGB", (32, 32), RED), "TIFF", compression="jpeg")
    with pytest.raises(BadImage, match="unsupported format: TIFF with jpeg compression"):
        load_image(data)


def test_byte_cap_is_enforced_for_bytes_and_paths(tmp_path):
    """IMG-25: data over the byte cap is refused before decoding, from bytes and from a file."""
    data = _encode(_noise((64, 64)), "PNG")
    limits = ImageLimits(max_bytes=len(data) - 1)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    for source in (data, path):
        with pytest.raises(BadImage, match="file too large"):
            load_image(source, limits=limits)


def test_stored_copy_has_no_gps_exif():
    """IMG-27: a GPS-tagged JPEG's stored copy carries no EXIF at all."""
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    exif.get_ifd(0x8825)[2] = (52.0, 13.0, 30.0)  # GPSLatitude
    data = _encode(Image.new("RGB", (64, 48), RED), "JPEG", exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825)
    stored = encode_for_storage(load_image(data))
    reopened = Image.open(io.BytesIO(stored))
    assert reopened.format == "JPEG"
    assert len(reopened.getexif()) == 0 and b"Exif" not in stored


def test_png_source_is_stored_as_png():
    """IMG-27: non-JPEG sources are stored losslessly as PNG with identical pixels."""
    loaded = load_image(_encode(_noise((40, 30)), "PNG"))
    stored = Image.open(io.BytesIO(encode_for_storage(loaded)))
    assert stored.format == "PNG" and images.storage_extension(loaded) == "png"
    assert np.array_equal(np.asarray(stored), np.asarray(loaded.image))


def test_sha256_is_of_the_original_bytes():
    """The content address is the sha256 of the uploaded bytes."""
    import hashlib

    data = _encode(_noise((32, 32)), "PNG")
    assert load_image(data).sha256 == hashlib.sha256(data).hexdigest()


def test_stored_name_is_a_content_address():
    """IMG-28: the stored path is derived from the hash only: 'ab/ab….png'."""
    sha = "ab" + "0" * 62
    assert safe_stored_name(sha, "png") == f"ab/{sha}.png"
    assert safe_stored_name(sha, ".JPG") == f"ab/{sha}.jpg"


@pytest.mark.parametrize(
    "sha, ext",
    [("../../x", "png"), ("AB" + "0" * 62, "png"), ("0" * 63 + "\x00", "png"), ("0" * 64, "html"), ("0" * 64, "/x")],
)
def test_stored_name_refuses_hostile_input(sha, ext):
    """IMG-28: anything that is not a lowercase hex digest or png/jpg is refused."""
    with pytest.raises(ValueError):
        safe_stored_name(sha, ext)


def test_file_name_is_never_used(tmp_path):
    """IMG-28: a hostile-looking upload name changes nothing: the result depends on the bytes only."""
    data = _encode(_noise((32, 32)), "PNG")
    path = tmp_path / ("CON\u202egpj.." + "x" * 200 + ".exe")
    path.write_bytes(data)
    assert load_image(path).sha256 == load_image(data).sha256


@pytest.mark.parametrize(
    "kwargs",
    [{"max_bytes": 0}, {"min_side": 0}, {"min_side": 20, "max_side": 10}, {"max_output_side": 8},
     {"max_pixels": 10**9}, {"background": (0, 0, 256)}, {"background": (0, 0)}, {"max_side": 1.5}],
)
def test_limits_validate(kwargs):
    """ImageLimits refuses inconsistent or out-of-range values."""
    with pytest.raises(ValueError):
        ImageLimits(**kwargs)


_MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I"]
_FORMATS = ["PNG", "JPEG", "WEBP", "TIFF", "GIF"]


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(_MODES),
    fmt=st.sampled_from(_FORMATS),
    width=st.integers(8, 48),
    height=st.integers(8, 48),
    orientation=st.integers(1, 8),
    seed=st.integers(0, 3),
)
def test_any_generated_image_gives_rgb_of_the_transposed_size_or_badimage(mode, fmt, width, height, orientation, seed):
    """IMG-30: any (mode, size, format, orientation) -> RGB of the expected upright size, or BadImage."""
    image = _noise((width, height), "L", seed).convert(mode) if mode not in ("I;16", "I") else None
    if image is None:
        arr = np.random.default_rng(seed).integers(0, 60_000, (height, width))
        image = Image.fromarray(arr.astype("<u2" if mode == "I;16" else np.int32))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # Pillow 12 deprecates writing mode I as PNG
            data = _with_orientation(image, fmt, orientation)
    except (OSError, ValueError, KeyError, TypeError):
        assume(False)  # Pillow cannot write this mode in this format
    written = Image.open(io.BytesIO(data)).getexif().get(0x0112, 1)
    try:
        loaded = load_image(data)
    except BadImage:
        assert min(width, height) < 16
        return
    expected = (height, width) if written in (5, 6, 7, 8) else (width, height)
    assert loaded.image.mode == "RGB"
    assert loaded.image.size == expected == (loaded.width, loaded.height)


def test_loader_refuses_when_pillow_safety_is_switched_off(monkeypatch):
    """CFG-03: if someone sets LOAD_TRUNCATED_IMAGES globally, the loader refuses to run."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="safety"):
        load_image(_encode(Image.new("RGB", (32, 32)), "PNG"))
