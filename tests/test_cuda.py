"""The CUDA path: fp16 autocast + GradScaler training, the feature cache and serving on the GPU.

These run only where a CUDA GPU is present (skipped on the CPU-only CI machines); on a GPU machine,
`make test` runs them with the rest.
"""

from __future__ import annotations

import math

import pytest
import torch

from ila_core.adapters import ILAConfig, base_blocks
from ila_core.config import BackboneConfig
from ila_core.store import LabelStore
from ila_core.training.config import preset
from ila_core.training.dataset import snapshot
from ila_core.training.fit import fit, prepare_model
from ila_core.training.toydata import toy_image, write_toy_store

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TINY = BackboneConfig(name="test_vit", image_size=96, weights="none")
METHOD = ILAConfig(ds_locations=(1, 3))


@pytest.fixture
def data(tmp_path):
    store_path = write_toy_store(tmp_path, num_classes=3, train_per_class=8, holdout_per_class=2, size=110)
    with LabelStore.open(store_path) as store:
        return snapshot(store, tmp_path)


@pytest.mark.parametrize("name", ["paper", "quick"])
def test_training_runs_on_cuda_in_fp16_autocast(data, name):
    """Both presets train on the GPU: fp16 matmuls inside the blocks, fp32 trainable weights, finite metrics."""
    cfg = preset(name, epochs=2, batch_size=4, warmup_steps=2, minutes=None, device="cuda")
    built = prepare_model(TINY, METHOD, 3, cfg)
    seen: set[torch.dtype] = set()
    hook = base_blocks(built.model)[-1].attn.qkv.register_forward_hook(
        lambda m, i, o: seen.add(o.dtype) if m.training else None
    )
    try:
        result = fit(built, data, cfg)
    finally:
        hook.remove()
    assert torch.float16 in seen  # autocast was on for the training steps
    trainable = [p for p in built.model.parameters() if p.requires_grad]
    assert all(p.is_cuda and p.dtype == torch.float32 and bool(torch.isfinite(p).all()) for p in trainable)
    m = result.metrics
    assert m is not None and m.count == len(data.holdout)
    assert all(math.isfinite(v) for v in (m.top1, m.top5, m.macro_f1, m.loss))


def test_predictor_on_cuda_matches_cpu(tmp_path):
    """A published version served on the GPU gives the CPU's top-1 and probabilities within fp32 noise."""
    from ila_core.checkpoint import build_reproducible
    from ila_core.serving.predictor import Predictor
    from ila_core.serving.versions import publish_version

    with LabelStore.open(tmp_path / "ila.db") as store:
        built = build_reproducible(TINY, METHOD, 3)
        with torch.no_grad():
            for p in built.model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p))
        vid, _ = publish_version(store, tmp_path, built, class_names=["a", "b", "c"], metrics={"top1": 0.5},
                                 snapshot_event_id=0)  # fmt: skip
        store.activate_version(vid)
        cpu = Predictor.from_store(tmp_path, store, device="cpu")
        gpu = Predictor.from_store(tmp_path, store, device="cuda")
    images = [toy_image(k % 3, 200 + k, size=96) for k in range(4)]
    a, b = cpu.predict(images, k=3), gpu.predict(images, k=3)
    assert [x[0][0] for x in a] == [x[0][0] for x in b]
    for x, y in zip(a, b, strict=True):
        assert max(abs(p - q) for (_, p), (_, q) in zip(sorted(x), sorted(y), strict=True)) < 1e-3
