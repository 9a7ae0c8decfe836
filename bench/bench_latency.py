"""CPU (or GPU) inference latency of ILA vs the plain ViT, measured side by side in one run.

Prints one JSON object per (backbone, image size, batch) with the latency ratio (median of per-round ratios,
with quartiles) next to the MAC ratio, and writes ``bench/results/latency_<device>.json``. Weights are random: latency does not depend on their values.

    python -m bench.bench_latency [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics

import torch

from bench.common import interleaved_times, machine, median, write_result
from ila_core.accounting import count_macs
from ila_core.adapters import fuse_for_inference, method_config
from ila_core.backbone import build_model
from ila_core.config import BackboneConfig

_logger = logging.getLogger(__name__)

CASES = [  # (backbone, image size, batch sizes)
    ("vit_small_patch14_dinov2", 224, (1, 16)),
    ("vit_small_patch14_dinov2", 448, (1, 16)),
    ("vit_base_patch16_224", 224, (1, 16)),
    ("vit_base_patch16_224", 448, (1, 16)),
]


def measure(name: str, size: int, batch: int, repeats: int, device: str) -> dict:
    """Median latency of ILA and the plain ViT (linear probe) for one configuration."""
    models = {}
    for variant in ("linear", "ila", "ila_unfused"):
        cfg = BackboneConfig(name=name, image_size=size, weights="none")
        method = method_config(variant.removesuffix("_unfused"))
        models[variant] = build_model(cfg, method, num_classes=100).model.eval().to(device)
    fuse_for_inference(models["ila"])  # what the app serves; "ila_unfused" is the training-time module
    x = torch.randn(batch, 3, size, size, device=device)

    def run(model):
        def fn():
            with torch.inference_mode():
                model(x)
            if device == "cuda":
                torch.cuda.synchronize()

        return fn

    times = interleaved_times({v: run(m) for v, m in models.items()}, repeats=repeats)
    plain, ila, unfused = median(times["linear"]), median(times["ila"]), median(times["ila_unfused"])
    # Ratios of the runs of one round (adjacent in time, same machine state), then their median and quartiles:
    # on a shared machine whose speed drifts by 25 % this is steadier than a ratio of two medians.
    paired = {v: [a / b for a, b in zip(times[v], times["linear"], strict=True)] for v in ("ila", "ila_unfused")}
    macs = {v: count_macs(models[v].cpu(), size) for v in ("linear", "ila_unfused")}
    return {
        "backbone": name,
        "image_size": size,
        "batch": batch,
        "plain_s": round(plain, 5),
        "ila_s": round(ila, 5),
        "ila_unfused_s": round(unfused, 5),
        "latency_ratio": round(median(paired["ila"]), 3),
        "latency_ratio_q1_q3": [round(q, 3) for q in statistics.quantiles(paired["ila"], n=4)[::2]],
        "latency_ratio_unfused": round(median(paired["ila_unfused"]), 3),
        "mac_ratio": round(macs["ila_unfused"] / macs["linear"], 3),
        "images_per_s_ila": round(batch / ila, 2),
        "images_per_s_plain": round(batch / plain, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1 and fewer repeats only")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    rows = []
    for name, size, batches in CASES:
        for batch in batches[:1] if args.quick else batches:
            reps = max(2, args.repeats * 4 if batch == 1 else args.repeats // 2)  # batch 1 is cheap and noisy
            row = measure(name, size, batch, reps, args.device)
            print(json.dumps(row), flush=True)
            rows.append(row)
    path = write_result(f"latency_{args.device}", {"machine": machine(), "rows": rows})
    _logger.info("wrote %s", path)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
