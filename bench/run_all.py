"""``make bench``: run every benchmark script in turn, then refresh the README's benchmark section."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys

_logger = logging.getLogger(__name__)

SCRIPTS = [  # (module, extra args)
    ("bench.bench_latency", []),
    ("bench.bench_feature_cache", []),
    ("bench.bench_train", []),
    ("bench.bench_explain", []),
    ("bench.bench_probe", []),
    ("bench.synthetic_probe", ["--data-dir", "data", "--out", "bench/results/synthetic_probe.json"]),
    ("bench.bench_load", []),
    ("bench.bench_import", []),
    ("bench.bench_scale", []),  # builds 1k / 10k / 30k stores: a few minutes
    ("bench.bench_first_model", ["--weights-from", "data"]),  # a fresh data dir until the first model serves
    ("bench.bench_recipe", ["--data-dir", "data", "--resume"]),  # tens of minutes on 2 CPU cores
]


def main() -> int:
    failed = []
    for module, extra in SCRIPTS:
        if importlib.util.find_spec(module) is None:
            _logger.warning("skipping %s: not present", module)
            continue
        _logger.info("running %s", module)
        if subprocess.run([sys.executable, "-m", module, *extra]).returncode != 0:
            failed.append(module)
    subprocess.run([sys.executable, "-m", "bench.report"], check=True)
    if failed:
        _logger.error("failed: %s", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    raise SystemExit(main())
