"""``python -m ila_core`` commands of the jobs package: train (one job, also under torchrun) and worker."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli_args import (
    Progress,
    backbone_args,
    backbone_from_args,
    method_overrides,
    print_result,
    recipe_args,
    train_overrides,
)

__all__ = ["add_train_parser", "run_train", "add_worker_parser", "run_worker"]


# -- train -----------------------------------------------------------------------------------------


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    """``train``: train adapters on the store's labels (one job; works under torchrun)."""
    p = sub.add_parser("train", help="train adapters + head on the labelled images (a training job)")
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--variant", default="ila", help="ila, ila+, ila++, adapter, convpass, vpt-shallow, linear, ...")
    backbone_args(p)
    recipe_args(p, "quick")
    p.add_argument("--user", default="cli")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from ..store import LabelStore
    from .distributed import cleanup, init_from_env, run_job_distributed
    from .params import enqueue_training
    from .worker import Worker

    params = dict(variant=args.variant, preset_name=args.preset, backbone=backbone_from_args(args),
                  method_overrides=method_overrides(args), **train_overrides(args))  # fmt: skip
    dist = init_from_env()
    progress = Progress(enabled=not args.no_progress and (dist is None or dist.rank == 0))
    try:
        if dist is not None:
            outcome = run_job_distributed(args.data_dir, dist, user=args.user, **params)
            if dist.rank != 0:
                return 0 if outcome.status == "succeeded" else 1
        else:
            worker = Worker(args.data_dir, on_event=progress)
            worker.startup_sweep()
            with LabelStore.open(worker.store_path) as store:
                enqueue_training(store, user=args.user, **params)
            outcome = worker.run_once()
    finally:
        progress.close()
        if dist is not None:
            cleanup()
    serving = outcome.serving or {}
    metrics = serving.get("metrics") or {}
    out = {"model_version": serving.get("version_id"), "kind": serving.get("kind"), "job_id": outcome.job_id,
           "status": outcome.status, "message": outcome.message, "epochs": outcome.epochs,
           "warnings": list(outcome.warnings),
           "metrics": {k: metrics.get(k) for k in ("top1", "top5", "macro_f1", "loss", "count")},
           "versions": [dict(v) for v in outcome.versions]}  # fmt: skip
    print_result(out, args.json)
    return 0 if outcome.status == "succeeded" else 1



# -- worker ----------------------------------------------------------------------------------------


def add_worker_parser(sub: argparse._SubParsersAction) -> None:
    """``worker``: run queued training jobs in this process until stopped."""
    p = sub.add_parser("worker", help="run queued training jobs (a separate process next to the app)")
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--once", action="store_true", help="run at most one job, then exit")
    p.add_argument("--poll-s", type=float, default=1.0)
    p.add_argument("--stale-after-s", type=float, default=120.0)
    p.set_defaults(func=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    from .worker import worker_main

    return worker_main(args.data_dir, once=args.once, poll_s=args.poll_s, stale_after_s=args.stale_after_s)
