"""Checkpoint format: constants, the error type, the published-checkpoint record and file naming."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

_logger = logging.getLogger(__name__)

FORMAT = "ila-studio-adapter/1"
SUFFIX = ".safetensors"
RANDOM_INIT_SEED = 0  # random-init backbones (tests, "none") are built under this seed so a reload matches
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file and the first problem found."""


@dataclass(frozen=True)
class CheckpointInfo:
    """A published checkpoint."""

    path: Path  # the .safetensors file
    manifest_path: Path
    sha256: str  # of the tensor file
    manifest: dict[str, Any]


def manifest_path_for(path: Path) -> Path:
    """The manifest next to a tensor file: ``x.safetensors`` -> ``x.json``."""
    path = Path(path)
    return path.with_name(path.name[: -len(SUFFIX)] + ".json") if path.name.endswith(SUFFIX) else path.with_suffix(".json")


def _first_non_finite(state: Mapping[str, torch.Tensor]) -> str | None:
    for key in sorted(state):
        t = state[key]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return key
    return None
