"""Training epoch time with and without the frozen-prefix feature cache, measured side by side in one run.

Same model, data and optimiser; uncached and cached epochs alternate (A B A B ...) so machine drift hits both.
Prints one JSON object and writes ``bench/results/feature_cache.json``: median epoch seconds of each, their
ratio (target <= 0.5), the compute floor (``compute_floor``: forward + backward of the part after the frozen
prefix over that of the whole network, on one batch: what any exact prefix cache leaves of the compute; the
cache also skips decoding, which dominates only for tiny models), the one-off cache fill time, the
ratio amortised over the quick preset's epochs, and memory (peak RSS of the process, bytes held by the cache,
peak CUDA memory when on GPU). Weights are random: timing does not depend on their values.

    python -m bench.bench_feature_cache [--quick] [--device cuda] [--backbone NAME --image-size S]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bench.common import interleaved_times, machine, write_result
from ila_core.adapters import method_config
from ila_core.config import BackboneConfig
from ila_core.store import LabelStore
from ila_core.training.config import PRESETS
from ila_core.training.dataset import ImageDataset, snapshot
from ila_core.training.feature_cache import (
    CachedDataset,
    CachedFeatures,
    FeatureCache,
    SuffixModel,
    plan_prefix,
    run_prefix,
)
from ila_core.training.fit import EpochShuffle, prepare_model
from ila_core.training.loop import build_optimizer, train_one_epoch
from ila_core.training.toydata import write_toy_store
from ila_core.training.transforms import preprocess_for, train_transform

_logger = logging.getLogger(__name__)


def _compute_floor(model: torch.nn.Module, suffix: torch.nn.Module, plan, batch: int, size: int, classes: int,
                       device: str, repeats: int) -> float:  # fmt: skip
    """Suffix forward+backward over whole-network forward+backward on one batch (no data loading).

    The compute an exact prefix cache cannot remove: it skips the frozen prefix, but every block after the
    first adapter still runs forward and backward each step.
    """
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    with torch.no_grad():
        tokens = run_prefix(model, plan, x)
    model.train()

    def step(net: torch.nn.Module, inputs: torch.Tensor) -> None:
        torch.nn.functional.cross_entropy(net(inputs), y).backward()
        model.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    times = interleaved_times({"full": lambda: step(model, x), "suffix": lambda: step(suffix, tokens)}, repeats)
    return statistics.median(times["suffix"]) / statistics.median(times["full"])


def run(backbone: str, image_size: int, classes: int, per_class: int, batch: int, repeats: int, device: str,
        ds_locations: tuple[int, ...] | None) -> dict:  # fmt: skip
    """Interleaved uncached/cached epochs on a toy set; returns the measurements."""
    quick = PRESETS["quick"]
    cfg = quick.__class__(**{**quick.to_dict(), "batch_size": batch, "device": device, "minutes": None})
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        write_toy_store(data_dir, num_classes=classes, train_per_class=per_class, holdout_per_class=0,
                        size=int(image_size * 1.15))  # fmt: skip
        with LabelStore.open(data_dir / "ila.db") as store:
            data = snapshot(store, data_dir)
        overrides = {"ds_locations": ds_locations} if ds_locations else {}
        bb = BackboneConfig(name=backbone, image_size=image_size, weights="none")
        built = prepare_model(bb, method_config("ila", **overrides), classes, cfg)
        model = built.model.to(device)
        prep = preprocess_for(model, image_size)
        plan = plan_prefix(model)
        cache = FeatureCache(max_memory_mb=4096)
        features = CachedFeatures(model, plan, prep, cache, "bench")
        t0 = time.perf_counter()
        features.fill(data.train, (0, 1), batch_size=32)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        fill_s = time.perf_counter() - t0

        uncached_ds = ImageDataset(data.train, train_transform(prep))
        cached_ds = CachedDataset(data.train, features, train=True, seed=cfg.seed)
        loaders = {
            "uncached": (model, DataLoader(uncached_ds, batch_size=batch, sampler=EpochShuffle(len(uncached_ds), 0),
                                           drop_last=True)),
            "cached": (SuffixModel(model, plan), DataLoader(cached_ds, batch_size=batch,
                                                            sampler=EpochShuffle(len(cached_ds), 0), drop_last=True)),
        }  # fmt: skip
        optimizer = build_optimizer(model, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=0.0)
        times: dict[str, list[float]] = {"uncached": [], "cached": []}
        step = 0
        for r in range(repeats + 1):  # the first round warms up allocators and caches; not counted
            for name, (net, loader) in loaders.items():
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                stats = train_one_epoch(net, loader, optimizer, device=device, epoch=r, global_step=step,
                                        lr_schedule=lambda s: 0.01, clip_grad=cfg.clip_grad)  # fmt: skip
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                step = stats.global_step
                if r > 0:
                    times[name].append(stats.seconds)
        unc, cac = statistics.median(times["uncached"]), statistics.median(times["cached"])
        floor = _compute_floor(model, SuffixModel(model, plan), plan, batch, image_size, classes, device, repeats)
        epochs = quick.epochs
        return {
            "backbone": backbone,
            "image_size": image_size,
            "images": len(data.train),
            "batch": batch,
            "prefix": plan.describe(),
            "device": device,
            "uncached_epoch_s": round(unc, 3),
            "cached_epoch_s": round(cac, 3),
            "epoch_time_ratio": round(cac / unc, 3),
            "compute_floor": round(floor, 3),
            "target_ratio": 0.5,
            "meets_target": cac / unc <= 0.5,
            "cache_fill_s": round(fill_s, 3),
            f"amortised_ratio_{epochs}_epochs": round((fill_s + epochs * cac) / (epochs * unc), 3),
            "cache_mb": round(cache.stats()["memory_bytes"] / 2**20, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.startswith("cuda") else None,
            "repeats": repeats,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_small_patch14_dinov2")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--ds-locations", help="e.g. 1,3 for the 6-block test_vit (default: the method's 3,7)")
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--per-class", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny test_vit at 96 px (seconds, for smoke runs)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.quick:
        args.backbone, args.image_size, args.ds_locations, args.repeats = "test_vit", 96, "1,3", 2
    ds = tuple(int(v) for v in args.ds_locations.split(",")) if args.ds_locations else None
    row = run(args.backbone, args.image_size, args.classes, args.per_class, args.batch, args.repeats, args.device, ds)
    result = {"title": "Feature cache: training epoch time, cached vs uncached (same run, interleaved)",
              "machine": machine(), "rows": [row]}  # fmt: skip
    print(json.dumps(result))
    if not args.no_write:
        write_result("feature_cache", result)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    raise SystemExit(main())
