"""Data: synthetic leaf cultivars, importers and exporters (see each module)."""

from .synthetic import *  # noqa: F403 - the package re-exports the synthetic generator's public names
from .synthetic import __all__ as __all__
