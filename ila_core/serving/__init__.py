"""Serving: model versions (publish, promotion rules, rollback) and the Predictor that answers with the active one.

Import submodules directly (``predictor`` builds models and imports torch).
"""

from __future__ import annotations

from .paths import ADAPTERS_DIR, adapters_dir, checkpoint_path

__all__ = ["ADAPTERS_DIR", "adapters_dir", "checkpoint_path"]
