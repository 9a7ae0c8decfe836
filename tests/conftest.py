"""Shared fixtures: tiny timm ViTs, configs and environment for offline, CPU-only tests."""

from __future__ import annotations

import os

# Before anything imports timm/gradio: no hub, no analytics, deterministic small thread pool.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest
import torch

from ila_core.adapters import ILAConfig
from ila_core.config import BackboneConfig

TINY = "test_vit"  # timm: patch 16, dim 64, depth 6, 2 heads
TINY_SIZE = 96  # 6x6 grid -> 4x4 -> 2x2 with DS-ILAs after blocks 1 and 3


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _cpu_paths(request, monkeypatch) -> None:
    """Every test but those marked ``cuda`` takes the CPU paths, also on a GPU machine (CI has none).

    Code picks CUDA through ``torch.cuda.is_available()`` ("auto" devices, the DDP backend), so hiding it here
    keeps `make test` on a GPU box the same suite as CI, plus the ``cuda`` tests.
    """
    if request.node.get_closest_marker("cuda") is None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def tiny_backbone() -> BackboneConfig:
    """Random-init timm ``test_vit`` at 96 px."""
    return BackboneConfig(name=TINY, image_size=TINY_SIZE, weights="none")


@pytest.fixture
def ila_config() -> ILAConfig:
    """DS-ILA placement for the 6-block test model."""
    return ILAConfig(ds_locations=(1, 3))


@pytest.fixture
def tiny_vit(tiny_backbone, ila_config):
    """A tiny ILA model with 3 classes."""
    from ila_core.backbone import build_model

    return build_model(tiny_backbone, ila_config, num_classes=3).model


@pytest.fixture
def store():
    """An empty in-memory LabelStore."""
    from ila_core.store import LabelStore

    with LabelStore.in_memory() as s:
        yield s


@pytest.fixture
def one_thread():
    """One intra-op torch thread: on 2 shared cores it is several times faster than two contended ones."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
