"""Training: recipe, data from store snapshots, loop, metrics, feature cache, jobs, versions, serving, DDP.

Import submodules directly for the heavier pieces (``worker``, ``predictor``, ``distributed``, ``reproduce``).
"""

from __future__ import annotations

from .config import PRESETS, TrainConfig, preset
from .metrics import EvalMetrics, MetricAccumulator

__all__ = ["TrainConfig", "PRESETS", "preset", "EvalMetrics", "MetricAccumulator"]
