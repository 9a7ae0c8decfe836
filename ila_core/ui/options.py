"""Settings of the web app that :class:`~ila_core.config.AppConfig` does not carry (model, worker, demo set).

``AppConfig`` holds the server settings (paths, address, auth file, limits); :class:`StudioOptions` holds
what the running studio does with them: which backbone serves and trains, whether the in-app worker runs,
whether a fresh data directory is seeded with the synthetic demo cultivars, and the retrain recipe.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import BackboneConfig

__all__ = ["TEST_BACKBONE", "DemoSpec", "StudioOptions"]

TEST_BACKBONE = BackboneConfig(name="test_vit", image_size=96, weights="none")  # tiny random ViT for tests


@dataclass(frozen=True)
class DemoSpec:
    """Size of the synthetic demo set written into a fresh data directory."""

    num_cultivars: int = 8
    image_size: int = 224
    train_per_class: int = 16
    holdout_per_class: int = 6
    pool_per_class: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.num_cultivars <= 64:
            raise ValueError(f"num_cultivars must be in [2, 64], got {self.num_cultivars}")
        if self.train_per_class < 1 or self.holdout_per_class < 0 or self.pool_per_class < 0:
            raise ValueError("demo set needs train_per_class >= 1 and non-negative holdout/pool counts")


@dataclass(frozen=True)
class StudioOptions:
    """What the studio serves and trains, and how it starts."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    variant: str = "ila"  # method name from ila_core.adapters.VARIANTS
    ds_locations: tuple[int, ...] | None = None  # None: the method default (3, 7); (1, 3) for the 6-block test_vit
    start_worker: bool = True  # run the training worker as a thread inside the app
    seed_demo: bool = True  # seed an empty data directory with the synthetic cultivars, then train once
    background_embedding: bool = True  # embed every stored image once after import (the probe then fits in seconds)
    background_scoring: bool = True  # score every stored image with the served version after each switch
    demo: DemoSpec = field(default_factory=DemoSpec)
    train_preset: str = "quick"
    train_overrides: tuple[tuple[str, Any], ...] = ()  # e.g. (("epochs", 2),) for tests
    top_k: int = 5
    low_confidence: float = 0.6  # top-1 probability below this is flagged in Classify
    off_leaf_warning: float = 0.35  # share of attribution outside the leaf mask that is flagged
    poll_seconds: float = 2.0  # Train tab refresh interval (fixed: changing a Timer's interval is flaky)
    import_roots: tuple[Path, ...] = ()  # server folders admins may import from (--import-root); none = off
    max_import_files: int = 20_000  # files or CSV rows one server-path import may name
    inline_import_files: int = 500  # larger server-path imports run in the background, off the request slots

    def __post_init__(self) -> None:
        if not 1 <= self.top_k <= 10:
            raise ValueError(f"top_k must be in [1, 10], got {self.top_k}")
        if not 0.0 < self.low_confidence < 1.0 or not 0.0 < self.off_leaf_warning < 1.0:
            raise ValueError("low_confidence and off_leaf_warning must be in (0, 1)")
        if self.poll_seconds <= 0:
            raise ValueError(f"poll_seconds must be > 0, got {self.poll_seconds}")
        if self.max_import_files < 1 or self.inline_import_files < 1:
            raise ValueError("max_import_files and inline_import_files must be >= 1")
        object.__setattr__(self, "import_roots", tuple(Path(r).expanduser().resolve() for r in self.import_roots))
        if self.ds_locations is not None:
            object.__setattr__(self, "ds_locations", tuple(int(i) for i in self.ds_locations))

    def with_overrides(self, **train_overrides: Any) -> StudioOptions:
        """A copy whose retrain recipe overrides these fields (None values are dropped)."""
        merged = dict(self.train_overrides) | {k: v for k, v in train_overrides.items() if v is not None}
        return dataclasses.replace(self, train_overrides=tuple(sorted(merged.items())))
