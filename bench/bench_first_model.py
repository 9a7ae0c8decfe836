"""Time to the first served model on a fresh data directory, as `make run` starts: seed, embed, probe, ILA.

Starts a :class:`~ila_core.ui.studio.Studio` (no web server) on an empty data directory with the default
DINOv2 backbone, and records when the demo set is imported, when every image is embedded, when the first
model (the probe) is served, and when the job's ILA version is published (and whether it was served). Writes
``bench/results/first_model.json``.

    python -m bench.bench_first_model --data-dir /tmp/first-model
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from pathlib import Path

from bench.common import machine, write_result

_logger = logging.getLogger(__name__)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/ila-first-model"))
    parser.add_argument("--weights-from", type=Path, default=Path("data"), help="a data dir with converted weights")
    parser.add_argument("--timeout-s", type=float, default=1800)
    args = parser.parse_args()

    from ila_core.config import AppConfig
    from ila_core.store import LabelStore
    from ila_core.ui.options import StudioOptions
    from ila_core.ui.studio import Studio
    from ila_core.weights import default_weights_path, ensure_default_weights

    shutil.rmtree(args.data_dir, ignore_errors=True)
    source = default_weights_path(args.weights_from)
    if source.exists():  # reuse a conversion (it takes ~10 s and is not what this measures)
        target = default_weights_path(args.data_dir)
        target.parent.mkdir(parents=True)
        shutil.copy2(source, target)
        shutil.copy2(source.with_suffix(".json"), target.with_suffix(".json"))
    ensure_default_weights(args.data_dir)

    marks: dict[str, float] = {}
    start = time.perf_counter()
    studio = Studio.open(AppConfig(data_dir=args.data_dir), StudioOptions())
    try:
        while time.perf_counter() - start < args.timeout_s:
            now = round(time.perf_counter() - start, 1)
            if "seeded" not in marks and studio.status.phase != "seeding" and studio.status.message:
                marks["seeded"] = now
            indexer = studio.embedder.status() if studio.embedder is not None else None
            if "seeded" in marks and "embedded" not in marks and indexer and indexer.total and indexer.done:
                marks["embedded"] = now
            if "first_model" not in marks and studio.models.version_id is not None:
                marks["first_model"] = now
            with LabelStore.open(studio.db_path, quick_check=False) as store:
                jobs = store.jobs(limit=1)
                versions = store.model_versions()
            if jobs and jobs[0]["status"] not in ("queued", "running"):
                marks["job_done"] = now
                break
            time.sleep(0.5)
    finally:
        studio.close()
    kinds = {v["kind"]: v for v in versions}
    probe_extra = ((kinds.get("probe") or {}).get("manifest") or {}).get("extra") or {}
    result = {
        "benchmark": "bench_first_model",
        "title": "Fresh data directory: seconds until each step (default DINOv2 ViT-S/14, 224 px)",
        "machine": {**machine(), "load_average_1min_at_end": round(os.getloadavg()[0], 1)},  # busy or quiet?
        "rows": [
            {"step": "demo set imported", "seconds": marks.get("seeded")},
            {"step": "every image embedded in the background (it waits while a job runs)",
             "seconds": marks.get("embedded")},
            {"step": "the probe's own embedding of what was missing", "seconds": probe_extra.get("embed_seconds")},
            {"step": "the probe's closed-form fit", "seconds": probe_extra.get("fit_seconds")},
            {"step": "first model served (probe)", "seconds": marks.get("first_model")},
            {"step": "job finished (ILA trained, compared)", "seconds": marks.get("job_done")},
        ],
        "versions": [{"kind": k, "top1": (v.get("metrics") or {}).get("top1"), "status": v["status"],
                      "note": v.get("note")} for k, v in kinds.items()],  # fmt: skip
        "job_message": jobs[0]["message"] if jobs else None,
    }
    path = write_result("first_model", result)
    for row in result["rows"]:
        print(f"{row['step']:<40} {row['seconds']}")
    for v in result["versions"]:
        print(f"{v['kind']:<8} top-1 {v['top1']}  {v['status']}  {v['note']}")
    _logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    raise SystemExit(main())
