"""Training job parameters: what the UI/CLI queue and what the worker reads back.

A job row stores JSON parameters (variant, recipe preset and overrides, backbone) and the data snapshot (the
last label event at enqueue time, CON-09). The store allows one queued or running job at a time (CON-08).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..adapters import MethodConfig, method_config
from ..config import BackboneConfig
from ..store import LabelStore
from ..training.config import TrainConfig, late_ds_locations, preset

__all__ = ["JOB_KIND", "job_params", "parse_job_params", "enqueue_training"]

JOB_KIND = "train"


def job_params(
    *,
    variant: str = "ila",
    preset_name: str = "quick",
    backbone: BackboneConfig | None = None,
    method_overrides: Mapping[str, Any] | None = None,
    probe: bool = True,
    publish_start: bool = True,
    **train_overrides: Any,
) -> dict[str, Any]:
    """JSON-ready parameters of a training job, validated now (ValueError) rather than in the worker.

    Args:
        variant: method name (``ila``, ``ila+``, ``ila++``, ``adapter``, ...), or ``probe`` for the probe alone.
        preset_name: ``quick`` or ``paper``.
        backbone: defaults to the shipped DINOv2 ViT-S/14 at 224 px.
        method_overrides: fields of the method config (e.g. ``{"ds_locations": [1, 3]}`` for a 6-block ViT).
        probe: publish a probe version first (seconds), the floor the trained version must beat to be served.
        publish_start: with an LP-FT recipe (``lp_init``), also publish the network as training starts (closed-form
            head, adapters untrained): a second floor the trained version must match to be served.
        **train_overrides: :class:`TrainConfig` fields (``epochs=5``, ``minutes=2``); None values are ignored.
    """
    b = backbone or BackboneConfig()
    params = {
        "variant": variant,
        "preset": preset_name,
        "probe": bool(probe) or variant == "probe",
        "publish_start": bool(publish_start),
        "method_overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in (method_overrides or {}).items()},
        "train": {k: v for k, v in train_overrides.items() if v is not None},
        "backbone": {"name": b.name, "image_size": b.image_size, "weights": b.weights,
                     "weights_file": None if b.weights_file is None else str(b.weights_file),
                     "normalization": b.normalization, "pos_embed_resize": b.pos_embed_resize},  # fmt: skip
    }
    parse_job_params(params)
    return params


def parse_job_params(params: Mapping[str, Any]) -> tuple[BackboneConfig, MethodConfig, TrainConfig]:
    """Configs from :func:`job_params` output; raises ValueError for anything invalid."""
    try:
        b = dict(params.get("backbone") or {})
        if b.get("weights_file"):
            b["weights_file"] = Path(b["weights_file"])
        backbone = BackboneConfig(**b)
        variant = params.get("variant", "ila")
        # the probe job trains nothing: its model is the frozen backbone plus a closed-form head
        overrides = dict(params.get("method_overrides") or {})
        config = preset(params.get("preset", "quick"), **dict(params.get("train") or {}))
        if config.ds_placement == "late" and variant.startswith("ila") and "ds_locations" not in overrides:
            overrides["ds_locations"] = late_ds_locations(_depth(backbone))  # the recipe's placement, unless named
        method = method_config("linear" if variant == "probe" else variant, **overrides)
    except TypeError as exc:  # unknown keyword in a stored job
        raise ValueError(f"invalid job parameters: {exc}") from None
    return backbone, method, config


def enqueue_training(store: LabelStore, *, user: str | None = None, **params: Any) -> int:
    """Queue a training job (see :func:`job_params`); its data snapshot is the current last label event.

    Raises:
        JobBusy: a job is already queued or running (CON-08).
    """
    return store.enqueue_job(JOB_KIND, job_params(**params), user=user)


def _depth(backbone: BackboneConfig) -> int:
    return _depth_of(backbone.name)


@functools.lru_cache(maxsize=16)
def _depth_of(name: str) -> int:
    """Number of blocks of a timm ViT, from a weightless build on the meta device (once per name: every Retrain
    click and every job parses its parameters)."""
    import timm
    import torch

    with torch.device("meta"):
        return len(timm.create_model(name, pretrained=False, num_classes=0).blocks)
