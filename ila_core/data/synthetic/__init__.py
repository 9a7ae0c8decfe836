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

Modules: ``config`` (:class:`SyntheticConfig`), ``traits`` (what tells cultivars apart), ``render`` (one leaf),
``scene`` (the class-independent background and camera), ``stream`` (:func:`generate`) and ``demo_set``
(:func:`write_demo_set`, an ImageFolder tree on disk).
"""

from __future__ import annotations

from .config import SyntheticConfig
from .demo_set import write_demo_set
from .render import render_leaf
from .stream import generate
from .traits import CultivarTraits, cultivar_names, cultivar_traits

__all__ = [
    "CultivarTraits",
    "SyntheticConfig",
    "cultivar_names",
    "cultivar_traits",
    "generate",
    "render_leaf",
    "write_demo_set",
]
