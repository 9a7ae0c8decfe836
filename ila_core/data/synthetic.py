"""Procedural leaf cultivars: a deterministic, ultra-fine-grained synthetic data set.

One species, ``num_cultivars`` cultivars that differ only in subtle traits of the blade (margin serration
count and depth, secondary vein angle and number, length/width ratio, tint, surface texture), photographed
under nuisance variation that never depends on the cultivar (rotation, scale, position, lighting, colour
cast, background colour and clutter, blur, sensor noise). The nuisance is strong enough that a linear
classifier on raw pixels stays near chance, while the traits stay visible to a pretrained backbone.

Every image is a pure function of ``(seed, cultivar index, image index)``: each one draws from its own
``numpy.random.Generator`` seeded with that tuple, never from global RNG state, so the same call gives the
same bytes in every run. Drawing uses Pillow at ``supersample`` times the output size, then a box
down-sampling, which antialiases the polygon edges and thin veins.
"""

from __future__ import annotations

import colorsys
import json
import logging
import math
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "CultivarTraits",
    "SyntheticConfig",
    "cultivar_names",
    "cultivar_traits",
    "render_leaf",
    "generate",
    "write_demo_set",
]

_logger = logging.getLogger(__name__)

_NAME_STEMS = (
    "Amber", "Birch", "Cedar", "Dawn", "Ember", "Fennel", "Garnet", "Hazel", "Indigo", "Juniper", "Kestrel",
    "Laurel", "Moss", "Nutmeg", "Opal", "Pepper", "Quince", "Rowan", "Saffron", "Thyme", "Umber", "Velvet",
    "Willow", "Yarrow", "Zephyr",
)  # fmt: skip
_TRAITS_STREAM = 0x7A17  # keeps the trait RNG stream apart from the per-image streams
_IMAGE_STREAM = 0x1EAF
_POOL_STREAM = 0x9001

# trait -> (centre, half-range at difficulty 1, lower bound, upper bound, within-cultivar jitter sd)
_TRAIT_DESIGN: dict[str, tuple[float, float, float, float, float]] = {
    "aspect": (2.3, 0.45, 1.3, 4.0, 0.05),
    "serration_count": (13.0, 6.0, 4.0, 34.0, 0.6),
    "serration_depth": (0.11, 0.06, 0.015, 0.3, 0.008),
    "vein_angle": (50.0, 14.0, 20.0, 80.0, 2.0),
    "vein_pairs": (8.0, 3.5, 3.0, 15.0, 0.4),
    "hue": (100.0, 7.0, 75.0, 125.0, 1.5),
    "texture_scale": (0.06, 0.035, 0.012, 0.15, 0.005),
    "texture_strength": (0.14, 0.08, 0.0, 0.35, 0.012),
}
_BLADE_LENGTH = 0.8  # typical blade length as a fraction of the image side
_MAX_ROTATION = 60.0  # degrees either way at nuisance 1: photographed roughly tip-up, as field protocols ask
_BACKGROUNDS = ((118, 92, 66), (205, 200, 188), (128, 128, 124), (62, 80, 58), (168, 148, 112), (92, 96, 110))


@dataclass(frozen=True)
class CultivarTraits:
    """The class-dependent parameters of one cultivar (cultivar means; each leaf jitters around them).

    Lengths are relative to the blade, so they survive the per-image rescaling.
    """

    aspect: float  # blade length / maximum blade width
    serration_count: float  # teeth per margin side (each leaf rounds its jittered value)
    serration_depth: float  # tooth height as a fraction of the local half-width
    vein_angle: float  # degrees between a secondary vein and the midrib, opening towards the tip
    vein_pairs: float  # secondary veins per side (rounded per leaf)
    hue: float  # blade hue in HSV degrees (green is about 100)
    texture_scale: float  # size of the surface mottling as a fraction of blade length
    texture_strength: float  # contrast of the surface mottling (0 = smooth)

    def __post_init__(self) -> None:
        for f in fields(self):
            _, _, low, high, _ = _TRAIT_DESIGN[f.name]
            value = getattr(self, f.name)
            if not low <= value <= high:
                raise ValueError(f"{f.name} must be in [{low}, {high}], got {value}")


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate: how many cultivars, how large, how hard."""

    num_cultivars: int = 8
    image_size: int = 224  # output side in pixels (square RGB)
    seed: int = 0  # picks the cultivars' traits and every image's draws
    difficulty: float = 1.0  # scales the gap between cultivar traits; smaller = harder (0, 2]
    nuisance: float = 1.0  # scales the class-independent variation; 0 = centred upright leaf on plain grey
    supersample: int = 3  # drawing scale factor used for antialiasing

    def __post_init__(self) -> None:
        if not 2 <= self.num_cultivars <= 256:
            raise ValueError(f"num_cultivars must be in [2, 256], got {self.num_cultivars}")
        if not 16 <= self.image_size <= 2048:
            raise ValueError(f"image_size must be in [16, 2048], got {self.image_size}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 0.0 < self.difficulty <= 2.0:
            raise ValueError(f"difficulty must be in (0, 2], got {self.difficulty}")
        if not 0.0 <= self.nuisance <= 2.0:
            raise ValueError(f"nuisance must be in [0, 2], got {self.nuisance}")
        if not 1 <= self.supersample <= 8:
            raise ValueError(f"supersample must be in [1, 8], got {self.supersample}")


def cultivar_names(config: SyntheticConfig) -> list[str]:
    """Unique, filesystem-safe cultivar names such as ``"Amber-01"``, in class-index order."""
    return [f"{_NAME_STEMS[i % len(_NAME_STEMS)]}-{i + 1:02d}" for i in range(config.num_cultivars)]


def cultivar_traits(config: SyntheticConfig) -> list[CultivarTraits]:
    """The traits of each cultivar, in class-index order.

    Each trait takes ``num_cultivars`` evenly spaced levels, shuffled independently per trait (a Latin
    hypercube), so every pair of cultivars differs in every trait, by amounts that shrink with
    ``difficulty``.
    """
    rng = np.random.default_rng([config.seed, _TRAITS_STREAM])
    levels = np.linspace(-1.0, 1.0, config.num_cultivars)
    columns = {}
    for name, (centre, half_range, low, high, _) in _TRAIT_DESIGN.items():
        values = centre + config.difficulty * half_range * rng.permutation(levels)
        columns[name] = np.clip(values, low, high)
    return [CultivarTraits(**{k: float(v[i]) for k, v in columns.items()}) for i in range(config.num_cultivars)]


def generate(config: SyntheticConfig, per_class: int, *, start_index: int = 0) -> Iterator[tuple[str, Image.Image]]:
    """Yield ``(cultivar name, image)`` for image indices ``start_index .. start_index + per_class - 1``.

    Classes are interleaved (index-major), so any prefix of the stream is nearly balanced.
    """
    names = cultivar_names(config)
    for _, cultivar, image in _stream(config, per_class, start_index):
        yield names[cultivar], image


def _stream(config: SyntheticConfig, per_class: int, start: int) -> Iterator[tuple[int, int, Image.Image]]:
    """Yield ``(image index, cultivar index, image)``; each image has its own generator seeded by the triple."""
    if per_class < 0 or start < 0:
        raise ValueError(f"per_class and start_index must be >= 0, got {per_class}, {start}")
    traits = cultivar_traits(config)
    for index in range(start, start + per_class):
        for k in range(config.num_cultivars):
            rng = np.random.default_rng([config.seed, _IMAGE_STREAM, k, index])
            yield index, k, render_leaf(traits[k], rng, config.image_size, nuisance=config.nuisance,
                                        supersample=config.supersample)  # fmt: skip


def write_demo_set(
    out_dir: Path, config: SyntheticConfig, *, train_per_class: int, holdout_per_class: int, pool_per_class: int
) -> Path:
    """Write an ImageFolder tree: ``{train,holdout}/<cultivar>/*.png`` plus unlabelled ``pool/*.png``.

    The splits use disjoint image indices. Pool file names do not reveal the cultivar. The tree is built
    in a temporary sibling folder and renamed into place, so an interrupted run never leaves half a set.

    Returns:
        ``out_dir``.

    Raises:
        FileExistsError: if ``out_dir`` exists and is not empty.
    """
    out_dir = Path(out_dir)
    if min(train_per_class, holdout_per_class, pool_per_class) < 0:
        raise ValueError("image counts per class must be >= 0")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; remove it or choose another folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        names = cultivar_names(config)
        for split, start, count in (("train", 0, train_per_class), ("holdout", train_per_class, holdout_per_class)):
            for index, k, image in _stream(config, count, start):
                _save(image, tmp / split / names[k] / f"{index:05d}.png")
        # the stream interleaves classes, so number pool files in a seeded random order: no label by position
        order = np.random.default_rng([config.seed, _POOL_STREAM]).permutation(pool_per_class * config.num_cultivars)
        pool = _stream(config, pool_per_class, train_per_class + holdout_per_class)
        for n, (_, _, image) in zip(order, pool, strict=True):
            _save(image, tmp / "pool" / f"pool-{n:05d}.png")
        manifest = {"config": asdict(config), "cultivars": cultivar_names(config), "train_per_class": train_per_class,
                    "holdout_per_class": holdout_per_class, "pool_per_class": pool_per_class}  # fmt: skip
        (tmp / "synthetic.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); rename cannot replace a directory on every platform
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _logger.info("wrote synthetic demo set to %s", out_dir)
    return out_dir


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


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
