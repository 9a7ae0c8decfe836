"""One leaf of a cultivar: jittered traits, blade outline with serrated margins, veins, surface mottling."""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw

from .scene import _background, _photograph, _smooth_noise
from .traits import _TRAIT_DESIGN, CultivarTraits

__all__ = ["render_leaf"]

_BLADE_LENGTH = 0.8  # typical blade length as a fraction of the image side
_MAX_ROTATION = 60.0  # degrees either way at nuisance 1: photographed roughly tip-up, as field protocols ask


def render_leaf(
    traits: CultivarTraits, rng: np.random.Generator, size: int, *, nuisance: float = 1.0, supersample: int = 3
) -> Image.Image:
    """Draw one leaf of a cultivar on a cluttered background.

    Args:
        traits: the cultivar's traits; this leaf jitters slightly around them.
        rng: the only source of randomness (trait jitter and every nuisance draw).
        size: output side in pixels.
        nuisance: scales rotation, offsets, lighting, clutter, blur and noise (0 = none).
        supersample: drawing scale factor for antialiasing.

    Returns:
        An RGB image of ``size`` x ``size`` pixels.
    """
    if size < 8 or supersample < 1 or not 0.0 <= nuisance <= 2.0:
        raise ValueError(f"need size >= 8, supersample >= 1, 0 <= nuisance <= 2; got {size}, {supersample}, {nuisance}")
    t = _jitter(traits, rng)
    canvas = size * supersample
    background = _background(rng, canvas, nuisance)
    # blade length scales with sqrt(aspect) so the blade area (and so the mean colour) does not depend on it
    zoom = math.exp(nuisance * rng.uniform(-0.15, 0.12))
    length = canvas * _BLADE_LENGTH * zoom * math.sqrt(t["aspect"] / _TRAIT_DESIGN["aspect"][0])
    angle = math.radians(nuisance * rng.uniform(-_MAX_ROTATION, _MAX_ROTATION))
    centre = canvas / 2 + nuisance * rng.uniform(-0.08, 0.08, size=2) * canvas
    outline, veins, midrib = _leaf_geometry(t, rng, length)

    def place(points: np.ndarray) -> list[tuple[float, float]]:
        # leaf frame: x across, y from base to tip; image y points down, tip up at angle 0
        local = points - np.array([0.0, length / 2])
        c, s = math.cos(angle), math.sin(angle)
        xy = np.stack([c * local[:, 0] + s * local[:, 1], s * local[:, 0] - c * local[:, 1]], axis=1) + centre
        return [tuple(p) for p in xy.tolist()]

    mask = Image.new("L", (canvas, canvas), 0)
    ImageDraw.Draw(mask).polygon(place(outline), fill=255)
    blade = colorsys.hsv_to_rgb(t["hue"] / 360.0, rng.uniform(0.5, 0.72), rng.uniform(0.36, 0.55))
    vein_rgb = tuple(int(255 * (0.55 * b + 0.45 * w)) for b, w in zip(blade, (0.85, 0.9, 0.6), strict=True))
    leaf = Image.new("RGB", (canvas, canvas), tuple(int(255 * b) for b in blade))
    draw = ImageDraw.Draw(leaf)
    vein_width = max(1, round(length * 0.007))
    for vein in veins:
        draw.line(place(vein), fill=vein_rgb, width=vein_width, joint="curve")
    draw.polygon(place(midrib), fill=vein_rgb)
    petiole = np.array([[0.0, 0.0], [0.0, -0.1 * length]])
    ImageDraw.Draw(background).line(place(petiole), fill=vein_rgb, width=max(1, round(length * 0.014)))

    mottling = _smooth_noise(rng, canvas, max(2, round(canvas / (t["texture_scale"] * length))))
    pixels = np.asarray(leaf, dtype=np.float32) * (1.0 + t["texture_strength"] * mottling)[..., None]
    alpha = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    pixels = alpha * pixels + (1.0 - alpha) * np.asarray(background, dtype=np.float32)
    small = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).resize((size, size), Image.Resampling.BOX)
    return _photograph(small, rng, nuisance)


def _jitter(traits: CultivarTraits, rng: np.random.Generator) -> dict[str, float]:
    # natural within-cultivar variation, independent of difficulty so small difficulties really are harder
    out = {}
    for name, (_, _, low, high, sd) in _TRAIT_DESIGN.items():
        out[name] = float(np.clip(getattr(traits, name) + sd * rng.standard_normal(), low, high))
    return out


def _leaf_geometry(t: dict[str, float], rng: np.random.Generator, length: float):
    """Outline, secondary veins and midrib polygons in the leaf frame (x across, y base -> tip)."""
    half_width = length / t["aspect"] / 2
    skew = rng.uniform(0.85, 1.2)  # where the blade is widest: natural, class-independent variation
    ts = np.linspace(0.0, 1.0, 900)
    profile = half_width * np.sin(np.pi * ts**skew) ** 0.85

    teeth = max(3, round(t["serration_count"]))
    lo, hi = 0.06, 0.96  # teeth stop short of the base and the apex
    u = np.clip((ts - lo) / (hi - lo), 0.0, 1.0)
    taper = np.sin(np.pi * u) ** 0.5

    def margin(phase: float) -> np.ndarray:
        saw = np.mod(u * teeth + phase, 1.0)  # slow rise then sharp cut: teeth point towards the apex
        return profile * (1.0 - t["serration_depth"] * taper * (1.0 - saw))

    right, left = margin(0.0), margin(rng.uniform(0.3, 0.7))
    outline = np.concatenate([np.stack([right, ts * length], 1), np.stack([-left[::-1], ts[::-1] * length], 1)])

    pairs = max(2, round(t["vein_pairs"]))
    starts = np.linspace(0.1, 0.82, pairs) + rng.uniform(-0.015, 0.015, size=pairs)
    veins = []
    theta0 = math.radians(t["vein_angle"])
    for side, width in ((1.0, right), (-1.0, left)):
        for y0 in starts:
            pts, x, y, theta = [(0.0, y0 * length)], 0.0, y0 * length, theta0
            step = length * 0.01
            while True:
                x, y = x + side * step * math.sin(theta), y + step * math.cos(theta)
                reach = np.interp(min(y / length, 1.0), ts, width)
                if abs(x) >= 0.88 * reach or y >= 0.97 * length:
                    break
                pts.append((x, y))
                theta *= 0.985  # veins curve gently towards the apex, as pinnate veins do
            veins.append(np.array(pts))
    base_w, tip_y = length * 0.012, length * 0.96
    midrib = np.array([[-base_w, 0.0], [base_w, 0.0], [base_w * 0.2, tip_y], [-base_w * 0.2, tip_y]])
    return outline, veins, midrib
