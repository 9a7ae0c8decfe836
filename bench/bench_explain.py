"""Cost of each explanation relative to a bare forward of the same model, measured in the same run.

For every model the four calls (forward, rollout, Grad-CAM, contrast) run round-robin, one image at a time,
so that load from other processes hits them alike; the ratio is median(explanation) / median(forward).
Targets: Grad-CAM <= 3x a forward, rollout <= 1.5x.

Models: the tiny test model (``test_vit`` + DS-ILAs after blocks 1 and 3, 96 px) and the default backbone
``vit_small_patch14_dinov2`` with DS-ILAs after blocks 3 and 7 at 224 px, random weights (no download).

Usage: ``python bench/bench_explain.py [--repeats 15] [--threads 1] [--out bench/results/explain.json]`` (or\n``python -m bench.bench_explain``); prints the report as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import RESULTS, interleaved_times, machine, median
from ila_core.adapters import ILAConfig
from ila_core.backbone import build_model
from ila_core.config import BackboneConfig
from ila_core.explain import attention_rollout, contrast_cam, grad_cam

MODELS = {
    "test_vit": (BackboneConfig(name="test_vit", image_size=96, weights="none"), ILAConfig(ds_locations=(1, 3))),
    "vit_small_patch14_dinov2": (
        BackboneConfig(name="vit_small_patch14_dinov2", image_size=224, weights="none"),
        ILAConfig(ds_locations=(3, 7)),
    ),
}
TARGETS = {"rollout": 1.5, "gradcam": 3.0}


def bench_model(name: str, repeats: int, warmup: int) -> dict:
    """Median milliseconds per call and ratios to the forward for one model (one image)."""
    backbone, method = MODELS[name]
    torch.manual_seed(0)
    model = build_model(backbone, method, num_classes=10).model.eval()
    x = torch.randn(1, 3, backbone.image_size, backbone.image_size)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    calls = {
        "forward": forward,
        "rollout": lambda: attention_rollout(model, x),
        "gradcam": lambda: grad_cam(model, x),
        "contrast": lambda: contrast_cam(model, x),
    }
    times = {k: median(v) for k, v in interleaved_times(calls, repeats, warmup).items()}
    row = {"model": name, "px": backbone.image_size, "ds_locations": str(method.ds_locations)}
    row.update({f"{k}_ms": round(1000 * v, 2) for k, v in times.items()})
    row.update({f"{k}_x": round(times[k] / times["forward"], 2) for k in calls if k != "forward"})
    row.update({f"{k}_ok": times[k] / times["forward"] <= t for k, t in TARGETS.items()})
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "explain.json")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is steadier on a busy machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {
        "title": "Explanation cost relative to a bare forward (1 image, random weights, median of interleaved runs)",
        "targets": {f"{k}_x": v for k, v in TARGETS.items()},
        "repeats": args.repeats,
        "machine": machine(),
        "rows": [bench_model(name, args.repeats, args.warmup) for name in MODELS],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, args.out)  # atomic, like bench.common.write_result, but honouring --out
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
