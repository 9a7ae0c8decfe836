"""Fit time of the closed-form ridge probe (:func:`ila_core.training.probe.fit_probe`) on synthetic embeddings.

Features are seeded Gaussian clusters (20 classes, unit noise, class means at 0.15 std per dimension, so the
problem is neither trivial nor hopeless) in float32. Each (N, D) case runs the full fit: 5-fold CV over the
default alphas, temperature search and the refit on all samples. Cases are interleaved round by round (A B C D
A B ...) so machine drift hits all; after one warm-up round the median of ``--repeats`` rounds is reported with
its quartiles. The target (issue requirement) is N=10,000 x D=384 in at most 2 s on 2 CPU cores. Prints one JSON
object per case and writes ``bench/results/probe.json`` (with the 1-minute load average before and after, since
the build machine is shared).

    python -m bench.bench_probe               # N in (1000, 10000) x D in (384, 768), 7 repeats
    python -m bench.bench_probe --quick       # N=1000 x D=384, 3 repeats (smoke run)
    python -m bench.bench_probe --threads 1 --no-write   # e.g. to tell thread contention from compute
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics

import torch

from bench.common import interleaved_times, machine, write_result
from ila_core.training.probe import DEFAULT_ALPHAS, fit_probe

_logger = logging.getLogger(__name__)

CLASSES = 20
FOLDS = 5
TARGET_S = 2.0  # for the N=10,000 x D=384 case
TARGET_CASE = (10_000, 384)


def make_features(n: int, dim: int, classes: int = CLASSES, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded Gaussian class clusters: (N, D) float32 features and (N,) labels."""
    g = torch.Generator().manual_seed(seed)
    means = 0.15 * torch.randn(classes, dim, generator=g)
    labels = torch.randint(classes, (n,), generator=g)
    return means[labels] + torch.randn(n, dim, generator=g), labels


def run(cases: list[tuple[int, int]], repeats: int, load: float) -> list[dict]:
    """Median fit time per case over interleaved rounds, plus what the fit chose and the load it ran under."""
    data = {case: make_features(*case) for case in cases}
    fits = {}

    def fit(case: tuple[int, int]) -> None:
        fits[case] = fit_probe(*data[case], CLASSES, folds=FOLDS)

    times = interleaved_times({case: (lambda c=case: fit(c)) for case in cases}, repeats)
    rows = []
    for case in cases:
        q1, _, q3 = statistics.quantiles(times[case], n=4) if repeats > 1 else [times[case][0]] * 3
        result = fits[case]
        row = {"N": case[0], "D": case[1], "classes": CLASSES, "folds": FOLDS, "alphas": len(DEFAULT_ALPHAS),
               "median_s": round(statistics.median(times[case]), 3), "q1_s": round(q1, 3), "q3_s": round(q3, 3),
               "min_s": round(min(times[case]), 3), "cv_top1": round(result.cv_top1, 4), "alpha": result.alpha,
               "temperature": round(result.temperature, 2), "load_1min": round(load, 2)}  # fmt: skip
        if case == TARGET_CASE:
            row["target_s"], row["meets_target"] = TARGET_S, row["median_s"] <= TARGET_S
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated sample counts N")
    parser.add_argument("--dims", default="384,768", help="comma-separated feature dims D")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's default, as the target says)")
    parser.add_argument("--quick", action="store_true", help="N=1000 x D=384, 3 repeats (smoke run)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.dims, args.repeats = "1000", "384", 3
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [(int(n), int(d)) for n in args.sizes.split(",") for d in args.dims.split(",")]
    load_before = os.getloadavg()[0]
    rows = run(cases, args.repeats, load_before)
    for row in rows:
        print(json.dumps(row), flush=True)
    result = {"title": (f"Ridge probe fit time (fit_probe: {FOLDS}-fold CV over {len(DEFAULT_ALPHAS)} alphas, "
                        f"temperature, refit; {CLASSES} classes, float32 synthetic features; median of "
                        f"{args.repeats} interleaved rounds)"),
              "machine": machine(), "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
              "repeats": args.repeats, "rows": rows}  # fmt: skip
    if not args.no_write:
        _logger.info("wrote %s", write_result("probe", result))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    raise SystemExit(main())
