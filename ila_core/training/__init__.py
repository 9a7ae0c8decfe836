"""Training: recipe presets, data from store snapshots, schedule, loop, metrics, frozen-prefix cache, DDP helpers.

Import submodules directly for the heavier pieces (``fit``, ``reproduce``). Jobs live in :mod:`ila_core.jobs`,
serving and model versions in :mod:`ila_core.serving`.
"""

from __future__ import annotations

from .config import PRESETS, TrainConfig, preset
from .metrics import EvalMetrics, MetricAccumulator

__all__ = ["TrainConfig", "PRESETS", "preset", "EvalMetrics", "MetricAccumulator"]
