"""Training throughput of the paper preset: ILA vs full fine-tuning (and the linear probe), side by side in one run.

Each variant runs the real training step (:func:`ila_core.training.loop.train_one_epoch`: per-iteration lr,
gradient clipping, fp16 autocast + GradScaler on CUDA) on random in-memory batches of the paper's batch size,
interleaved variant by variant so machine drift hits all. Prints one JSON object per (backbone, image size)
with images/s of each variant, ILA's speed-up over full fine-tuning, and peak memory (CUDA: peak allocated;
CPU: not separable per variant, omitted). Writes ``bench/results/train_<device>.json``. Weights are random:
throughput does not depend on their values.

    python -m bench.bench_train                 # ViT-B/16; on CUDA at 224 and 448 (the paper's setting), CPU 224
    python -m bench.bench_train --quick         # tiny test_vit at 96 px, seconds (smoke run)
    python -m bench.bench_train --backbone vit_small_patch14_dinov2 --sizes 224 --steps 4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics

import torch
from torch import nn

from bench.common import machine, write_result
from ila_core.adapters import method_config
from ila_core.config import BackboneConfig
from ila_core.training.config import PRESETS
from ila_core.training.fit import prepare_model
from ila_core.training.loop import build_optimizer, train_one_epoch

_logger = logging.getLogger(__name__)

VARIANTS = ("ila", "full", "linear")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _model(backbone: str, size: int, variant: str, classes: int, device: str, ds: tuple[int, ...] | None) -> nn.Module:
    cfg = dataclasses.replace(PRESETS["paper"], device=device)
    overrides = {"ds_locations": ds} if ds and variant.startswith("ila") else {}
    bb = BackboneConfig(name=backbone, image_size=size, weights="none")
    return prepare_model(bb, method_config(variant, **overrides), classes, cfg).model.to(device)


def measure(backbone: str, size: int, *, steps: int, rounds: int, device: str, classes: int = 100,
            ds: tuple[int, ...] | None = None) -> dict:  # fmt: skip
    """Median images/s per variant over ``rounds`` interleaved rounds of ``steps`` training steps each."""
    paper = PRESETS["paper"]
    amp = paper.amp and device.startswith("cuda")
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(paper.batch_size, 3, size, size, generator=g),
                torch.randint(0, classes, (paper.batch_size,), generator=g)) for _ in range(steps)]  # fmt: skip
    runs = {}
    for variant in VARIANTS:
        model = _model(backbone, size, variant, classes, device, ds)
        # a small fixed lr: throughput does not depend on it, and full fine-tuning of random weights at 0.1 diverges
        opt = build_optimizer(model, lr=1e-3, momentum=paper.momentum, nesterov=paper.nesterov, weight_decay=0.0)
        scaler = torch.amp.GradScaler("cuda") if amp else None
        runs[variant] = (model, opt, scaler)
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    peak: dict[str, float | None] = {v: None for v in VARIANTS}
    for r in range(rounds + 1):  # round 0 warms up kernels and allocators; not counted
        for variant, (model, opt, scaler) in runs.items():
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            _sync(device)
            stats = train_one_epoch(model, batches, opt, device=device, epoch=r, global_step=0,
                                    lr_schedule=lambda s: 1e-3, clip_grad=paper.clip_grad, scaler=scaler,
                                    amp=amp)  # fmt: skip
            _sync(device)
            if r > 0:
                rates[variant].append(stats.samples / stats.seconds)
            if device.startswith("cuda"):
                peak[variant] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    ips = {v: statistics.median(x) for v, x in rates.items()}
    row = {"backbone": backbone, "image_size": size, "batch": paper.batch_size, "device": device, "amp_fp16": amp}
    for v in VARIANTS:
        row[f"{v}_img_s"] = round(ips[v], 2)
    row["ila_vs_full_speedup"] = round(ips["ila"] / ips["full"], 3)
    row["ila_vs_linear"] = round(ips["ila"] / ips["linear"], 3)
    if device.startswith("cuda"):
        row.update({f"{v}_peak_mb": peak[v] for v in VARIANTS})
        row["ila_vs_full_memory"] = round(peak["ila"] / peak["full"], 3)
    row["steps"], row["rounds"] = steps, rounds
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_base_patch16_224")
    parser.add_argument("--sizes", help="comma-separated image sizes (default: 224,448 on CUDA, 224 on CPU)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per round (default: 20 GPU, 3 CPU)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny test_vit at 96 px (seconds, for smoke runs)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    ds = None
    if args.quick:
        args.backbone, args.sizes, ds, args.rounds = "test_vit", "96", (1, 3), 2
    gpu = args.device.startswith("cuda")
    steps = args.steps or (20 if gpu else 3)
    args.sizes = args.sizes or ("224,448" if gpu else "224")
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        row = measure(args.backbone, size, steps=steps, rounds=args.rounds, device=args.device, ds=ds)
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {"title": f"Training throughput, paper preset (batch 8), ILA vs full fine-tuning ({args.device})",
              "machine": machine(), "rows": rows}  # fmt: skip
    if not args.no_write:
        _logger.info("wrote %s", write_result(f"train_{args.device.split(':')[0]}", result))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    raise SystemExit(main())
