"""How close the Train tab's time estimate comes: estimate a retrain from the pace of a smaller one, run it, compare.

Job 1 trains the quick ILA preset on ``--first`` images per cultivar and records its pace; then images are
added up to ``--second`` per cultivar, :func:`ila_core.jobs.estimate.estimate_job` predicts job 2 part by part
(cache fill for the new views, the steps, the holdout), job 2 runs, and the table puts each estimated part
beside the measured one. The probe stage is off in both jobs: in the app the background embedder has the
embeddings ready before a retrain, so the probe takes seconds, and the estimate leaves it out.

    python -m bench.bench_estimate                       # DINOv2 ViT-S/14 at 224 px, 6 cultivars, 8 -> 32 images each
    python -m bench.bench_estimate --backbone test_vit   # tiny random ViT at 96 px, seconds (smoke run)

Writes ``bench/results/estimate.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from bench.common import machine, write_result
from ila_core.config import DEFAULT_BACKBONE, BackboneConfig
from ila_core.jobs.estimate import estimate_job, latest_pace
from ila_core.jobs.params import parse_job_params
from ila_core.jobs.worker import Worker, enqueue_training, job_params
from ila_core.store import LabelStore
from ila_core.training.toydata import add_toy_images, write_toy_store

_logger = logging.getLogger(__name__)
_REPO_WEIGHTS = Path(__file__).resolve().parents[1] / "data" / "weights"


def _job(data_dir: Path, backbone: BackboneConfig) -> tuple[float, dict]:
    """Run one quick ILA job (no probe stage); its wall seconds and the trained version's recorded pace."""
    with LabelStore.open(data_dir / "ila.db") as store:
        enqueue_training(store, variant="ila", preset_name="quick", backbone=backbone, probe=False)
    began = time.perf_counter()
    outcome = Worker(data_dir).run_once()
    seconds = time.perf_counter() - began
    if outcome.status != "succeeded":
        raise RuntimeError(f"job failed: {outcome.message}")
    with LabelStore.open(data_dir / "ila.db") as store:
        trained = next(v for v in store.model_versions() if (v["manifest"].get("extra") or {}).get("pace"))
    return seconds, trained["manifest"]["extra"]["pace"]


def run(backbone: BackboneConfig, classes: int, first: int, second: int, holdout: int) -> dict:
    """Job 1, the estimate for job 2, job 2; every part side by side."""
    with tempfile.TemporaryDirectory(prefix="bench-estimate-") as tmp:
        data_dir = Path(tmp)
        if backbone.weights == "default" and _REPO_WEIGHTS.is_dir():
            (data_dir / "weights").symlink_to(_REPO_WEIGHTS)  # `make weights` converted them once already
        write_toy_store(data_dir, num_classes=classes, train_per_class=first, holdout_per_class=holdout, size=64)
        first_s, first_pace = _job(data_dir, backbone)
        with LabelStore.open(data_dir / "ila.db") as store:
            for k in range(classes):
                add_toy_images(store, data_dir, k, range(100 + first, 100 + second), split="train", size=64)
                add_toy_images(store, data_dir, k, range(200 + holdout, 200 + 2 * holdout), split="holdout", size=64)
            versions = store.model_versions()
        _, _, config = parse_job_params(job_params(variant="ila", preset_name="quick", backbone=backbone))
        pace = latest_pace(versions, backbone=backbone.name, image_size=backbone.image_size)
        est = estimate_job(classes * second, classes * 2 * holdout, config, pace)
        second_s, second_pace = _job(data_dir, backbone)
    measured_eval = second_s - second_pace["fill_seconds"] - second_pace["train_seconds"]
    return {
        "backbone": backbone.name, "image_size": backbone.image_size, "machine": machine(),
        "job1": {"train_images": first_pace["train_images"], "seconds": round(first_s, 1), "pace": first_pace},
        "job2": {"train_images": second_pace["train_images"], "holdout_images": second_pace["holdout_images"]},
        "parts": {
            "fill": {"views_est": est.fill_views, "views": second_pace["fill_views"],
                     "est_s": round(est.fill_s, 1), "measured_s": round(second_pace["fill_seconds"], 1)},
            "train": {"steps": est.steps, "est_s": round(est.train_s, 1),
                      "measured_s": round(second_pace["train_seconds"], 1)},
            "rest": {"est_s": round(est.eval_s, 1), "measured_s": round(measured_eval, 1),
                     "note": "estimate: job 1's head fit and evaluations scaled by image count; measured: job 2 "
                             "minus fill and steps (model build, head fit, evaluations, publishing)"},
            "total": {"est_s": round(est.total_s, 1), "measured_s": round(second_s, 1),
                      "ratio": round(second_s / est.total_s, 2) if est.total_s else None},
        },
        "text": est.text(),
    }  # fmt: skip


def with_rows(result: dict) -> dict:
    """The result with a title and one row per part, as ``bench.report`` renders results."""
    parts = result["parts"]
    names = {"fill": f"feature cache fill ({parts['fill']['views']} new views)",
             "train": f"{parts['train']['steps']} training steps",
             "rest": "the rest (estimate: head fit and evaluations; measured: also model build and publishing)",
             "total": "whole job"}  # fmt: skip
    rows = [{"part": names[k], "estimated_s": v["est_s"], "measured_s": v["measured_s"]} for k, v in parts.items()]
    title = (f"Train tab time estimate vs the job it estimated ({result['backbone']}, {result['image_size']} px, quick "
             f"ILA; job 1 on {result['job1']['train_images']} images gives the pace, job 2 on "
             f"{result['job2']['train_images']})")  # fmt: skip
    return {"benchmark": "bench_estimate", "title": title, **result, "rows": rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--first", type=int, default=8, help="training images per cultivar in job 1")
    p.add_argument("--second", type=int, default=32, help="training images per cultivar in job 2")
    p.add_argument("--holdout", type=int, default=2, help="holdout images per cultivar added before each job")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    small = args.backbone == "test_vit"
    backbone = BackboneConfig(name=args.backbone, image_size=96 if small else 224,
                              weights="none" if small else "default")  # fmt: skip
    result = run(backbone, args.classes, args.first, args.second, args.holdout)
    print(json.dumps(result["parts"], indent=1))
    print(result["text"])
    write_result("estimate" if not small else "estimate_smoke", with_rows(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
