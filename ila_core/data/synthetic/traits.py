"""The class-dependent part of the data set: each cultivar's blade traits and its name.

Cultivars differ only in these traits; everything else an image shows is nuisance (see ``scene``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from .config import SyntheticConfig

__all__ = ["CultivarTraits", "cultivar_names", "cultivar_traits"]

_NAME_STEMS = (
    "Amber", "Birch", "Cedar", "Dawn", "Ember", "Fennel", "Garnet", "Hazel", "Indigo", "Juniper", "Kestrel",
    "Laurel", "Moss", "Nutmeg", "Opal", "Pepper", "Quince", "Rowan", "Saffron", "Thyme", "Umber", "Velvet",
    "Willow", "Yarrow", "Zephyr",
)  # fmt: skip
_TRAITS_STREAM = 0x7A17  # keeps the trait RNG stream apart from the per-image streams

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
