"""The loader's vocabulary: the error it raises, the caps it applies and the image it returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

__all__ = ["BadImage", "ImageLimits", "LoadedImage"]


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
