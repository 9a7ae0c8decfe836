"""ILA Studio core: Down-Sampling Inter-Layer Adapters on frozen timm ViTs, and the tools around them.

The re-exports below load lazily so that light users (the label store, the CLI's ``--help``, a worker
process) do not pay for importing torch and timm.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ILAConfig", "ILAdapter", "inject", "method_config", "BuiltModel", "build_model", "AppConfig", "BackboneConfig"]

_WHERE = {
    "ILAConfig": "ila_core.adapters",
    "ILAdapter": "ila_core.adapters",
    "inject": "ila_core.adapters",
    "method_config": "ila_core.adapters",
    "BuiltModel": "ila_core.backbone",
    "build_model": "ila_core.backbone",
    "AppConfig": "ila_core.config",
    "BackboneConfig": "ila_core.config",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'ila_core' has no attribute {name!r}")
