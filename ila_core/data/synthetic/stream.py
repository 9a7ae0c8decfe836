"""The image stream: ``(cultivar, image)`` pairs, each image drawn from its own seeded generator."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image

from .config import SyntheticConfig
from .render import render_leaf
from .traits import cultivar_names, cultivar_traits

__all__ = ["generate"]

_IMAGE_STREAM = 0x1EAF


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
