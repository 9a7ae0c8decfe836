"""Data: synthetic leaf cultivars, importers and exporters (see each module)."""

from .synthetic import (
    CultivarTraits,
    SyntheticConfig,
    cultivar_names,
    cultivar_traits,
    generate,
    render_leaf,
    write_demo_set,
)

__all__ = [
    "CultivarTraits",
    "SyntheticConfig",
    "cultivar_names",
    "cultivar_traits",
    "generate",
    "render_leaf",
    "write_demo_set",
]
