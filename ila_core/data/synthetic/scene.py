"""The class-independent part of every image: a cluttered background and the "camera" (light, cast, blur, noise)."""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

_BACKGROUNDS = ((118, 92, 66), (205, 200, 188), (128, 128, 124), (62, 80, 58), (168, 148, 112), (92, 96, 110))


def _smooth_noise(rng: np.random.Generator, canvas: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-sd noise with blobs about ``canvas / cells`` pixels wide."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    up = Image.fromarray(coarse).resize((canvas, canvas), Image.Resampling.BICUBIC)
    arr = np.asarray(up, dtype=np.float32)
    return (arr - arr.mean()) / (arr.std() + 1e-6)


def _background(rng: np.random.Generator, canvas: int, nuisance: float) -> Image.Image:
    """A plain or mottled surface with twigs, pebbles and leaf fragments; nothing depends on the class."""
    base = np.array(_BACKGROUNDS[rng.integers(len(_BACKGROUNDS))], dtype=np.float32)
    colour = (1 - min(nuisance, 1.0)) * 128.0 + min(nuisance, 1.0) * base * np.exp(rng.normal(0, 0.12, 3))
    surface = colour * (1.0 + 0.08 * nuisance * _smooth_noise(rng, canvas, int(rng.integers(3, 12))))[..., None]
    image = Image.fromarray(np.clip(surface, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.poisson(7 * nuisance))):
        x, y = rng.uniform(0, canvas, size=2)
        r = canvas * rng.uniform(0.015, 0.07)
        kind = rng.integers(3)
        if kind == 0:  # twig
            a = rng.uniform(0, np.pi)
            tip = (x + 3 * r * math.cos(a), y + 3 * r * math.sin(a))
            draw.line([(x, y), tip], fill=_shade(rng, (96, 70, 45)), width=max(1, round(r * 0.15)))
        elif kind == 1:  # pebble
            draw.ellipse([x - r, y - 0.7 * r, x + r, y + 0.7 * r], fill=_shade(rng, (150, 145, 135)))
        else:  # green fragment, so "green blob" alone does not find the leaf
            hue = rng.uniform(70, 130) / 360
            rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.4, 0.8), rng.uniform(0.3, 0.6))
            pts = [(x + r * math.cos(a), y + 0.6 * r * math.sin(a)) for a in np.linspace(0, 2 * np.pi, 7)[:-1]]
            draw.polygon(pts, fill=tuple(int(255 * c) for c in rgb))
    return image


def _shade(rng: np.random.Generator, rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    f = rng.uniform(0.7, 1.3)
    return tuple(int(min(255, c * f)) for c in rgb)


def _photograph(image: Image.Image, rng: np.random.Generator, nuisance: float) -> Image.Image:
    """Lighting, colour cast, defocus and sensor noise, all class-independent."""
    size = image.size[0]
    radius = nuisance * rng.uniform(0.0, 1.0) * size / 224
    if radius > 0.05:
        image = image.filter(ImageFilter.GaussianBlur(radius))
    arr = np.asarray(image, dtype=np.float32)
    gain = math.exp(nuisance * rng.normal(0.0, 0.18)) * np.exp(nuisance * rng.normal(0.0, 0.07, 3))
    phi, slope = rng.uniform(0, 2 * np.pi), nuisance * rng.uniform(0.0, 0.35)
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    light = 1.0 + slope * (math.cos(phi) * ramp[None, :] + math.sin(phi) * ramp[:, None])
    arr = arr * light[..., None] * gain.astype(np.float32)
    arr += nuisance * rng.uniform(0.0, 6.0) * rng.standard_normal(arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
