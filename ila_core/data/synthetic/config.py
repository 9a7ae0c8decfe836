"""What the synthetic generator makes: how many cultivars, how large, how hard."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SyntheticConfig"]


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
