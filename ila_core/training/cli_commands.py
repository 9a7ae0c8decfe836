"""``python -m ila_core`` commands of the training package: train, eval, predict, reproduce, worker.

Each ``add_<name>_parser(subparsers)`` registers one sub-command whose handler ``run_<name>(args) -> int``
prints one JSON object on stdout with ``--json`` (progress bars go to stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "add_train_parser", "run_train", "add_eval_parser", "run_eval", "add_predict_parser", "run_predict",
    "add_reproduce_parser", "run_reproduce", "add_worker_parser", "run_worker",
]  # fmt: skip

_logger = logging.getLogger(__name__)


def _backbone_args(p: argparse.ArgumentParser, *, default_name: str | None = None, default_weights: str = "default") -> None:
    from ..config import DEFAULT_BACKBONE

    p.add_argument("--backbone", default=default_name or DEFAULT_BACKBONE, help="timm model name")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--weights", default=default_weights,
                   help="default (shipped DINOv2 ViT-S/14), hub, none (random init) or a safetensors file path")  # fmt: skip


def _backbone(args: argparse.Namespace):
    from ..config import BackboneConfig

    if args.weights in ("default", "hub", "none"):
        return BackboneConfig(name=args.backbone, image_size=args.image_size, weights=args.weights)
    return BackboneConfig(name=args.backbone, image_size=args.image_size, weights="file", weights_file=Path(args.weights))


def _recipe_args(p: argparse.ArgumentParser, default_preset: str) -> None:
    p.add_argument("--preset", default=default_preset, choices=["quick", "paper"])
    p.add_argument("--epochs", type=int)
    p.add_argument("--minutes", type=float, help="wall-clock budget")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--ds-locations", help="0-based blocks after which DS-ILAs go, e.g. 3,7 (ViT-B/S) or 1,3 (6 blocks)")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache", dest="use_feature_cache", action="store_const", const=True)
    cache.add_argument("--no-cache", dest="use_feature_cache", action="store_const", const=False)


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in ("epochs", "minutes", "batch_size", "lr", "seed", "device", "use_feature_cache")}


def _method_overrides(args: argparse.Namespace) -> dict[str, Any]:
    if not args.ds_locations:
        return {}
    return {"ds_locations": [int(v) for v in args.ds_locations.split(",") if v.strip()]}


class _Progress:
    """A tqdm bar on stderr fed by training events."""

    def __init__(self, enabled: bool = True) -> None:
        from tqdm import tqdm

        self._tqdm, self.bar, self.enabled = tqdm, None, enabled

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.enabled or event.get("kind", "progress") != "progress" or event.get("phase") != "train":
            return
        if self.bar is None or self.bar.total != event["total_steps"]:
            if self.bar is not None:
                self.bar.close()
            self.bar = self._tqdm(total=event["total_steps"], file=sys.stderr, desc="train", unit="step")
        self.bar.n = event["step"]
        self.bar.set_postfix(epoch=event["epoch"], loss=f"{event['loss']:.3f}", lr=f"{event['lr']:.2e}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _print(obj: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj))
    else:
        for key, value in obj.items():
            print(f"{key}: {value}")


# -- train -----------------------------------------------------------------------------------------


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    """``train``: train adapters on the store's labels (one job; works under torchrun)."""
    p = sub.add_parser("train", help="train adapters + head on the labelled images (a training job)")
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--variant", default="ila", help="ila, ila+, ila++, adapter, convpass, vpt-shallow, linear, ...")
    _backbone_args(p)
    _recipe_args(p, "quick")
    p.add_argument("--user", default="cli")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from ..store import LabelStore
    from .distributed import cleanup, init_from_env, run_job_distributed
    from .worker import Worker, enqueue_training

    params = dict(variant=args.variant, preset_name=args.preset, backbone=_backbone(args),
                  method_overrides=_method_overrides(args), **_train_overrides(args))  # fmt: skip
    dist = init_from_env()
    progress = _Progress(enabled=not args.no_progress and (dist is None or dist.rank == 0))
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
    metrics = outcome.metrics or {}
    out = {"model_version": outcome.version_id, "job_id": outcome.job_id, "status": outcome.status,
           "promoted": outcome.promoted, "message": outcome.message, "epochs": outcome.epochs,
           "metrics": {k: metrics.get(k) for k in ("top1", "top5", "macro_f1", "loss", "count", "per_class_accuracy")}}  # fmt: skip
    _print(out, args.json)
    return 0 if outcome.status == "succeeded" else 1


# -- eval / predict --------------------------------------------------------------------------------


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="model version id (default: the active one)")
    which.add_argument("--checkpoint", type=Path, help="a .safetensors adapter checkpoint")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")


def _load(args: argparse.Namespace):
    """(version id or None, built model, manifest) for --version / --checkpoint / the active version.

    The model is for inference only (eval, predict): its adapters are fused, as the app serves them.
    """
    from ..adapters import fuse_for_inference
    from ..checkpoint import load_built
    from ..store import LabelStore
    from .versions import checkpoint_path
    from .worker import default_store_path

    version_id, path = None, args.checkpoint
    if path is None:
        with LabelStore.open(default_store_path(args.data_dir)) as store:
            version = store.model_version(args.version) if args.version is not None else store.active_version()
        if version is None:
            raise ValueError("no active model version: train one first (python -m ila_core train)")
        version_id, path = version["id"], checkpoint_path(args.data_dir, version)
    built, manifest = load_built(path, args.data_dir, device=args.device)
    fuse_for_inference(built.model)
    return version_id, built, manifest


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    """``eval``: metrics of a model version on the store's holdout (or train) images."""
    p = sub.add_parser("eval", help="top-1/top-5/macro-F1 of a model version on the holdout split")
    _model_args(p)
    p.add_argument("--split", default="holdout", choices=["holdout", "train"])
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from ..store import LabelStore
    from .dataset import ImageDataset, Sample, image_path
    from .loop import evaluate
    from .transforms import eval_transform, preprocess_for
    from .worker import default_store_path

    version_id, built, manifest = _load(args)
    names = list(manifest["class_names"])
    index = {n: i for i, n in enumerate(names)}
    with LabelStore.open(default_store_path(args.data_dir)) as store:
        items = store.labelled_items()
    chosen = [it for it in items if (it.split == "holdout") == (args.split == "holdout")]
    samples = [Sample(image_path(args.data_dir, it.rel_path), index[it.label], it.sha256)
               for it in chosen if it.label in index]  # fmt: skip
    if not samples:
        raise ValueError(f"no labelled {args.split} images of this model's classes")
    ratio = float((manifest.get("train_config") or {}).get("resize_ratio", 1.34))
    prep = preprocess_for(built.model, built.backbone.image_size, ratio)
    loader = DataLoader(ImageDataset(samples, eval_transform(prep)), batch_size=args.batch_size)
    metrics = evaluate(built.model, loader, device=args.device, class_names=names)
    _print({"model_version": version_id, "split": args.split, "skipped": len(chosen) - len(samples),
            "metrics": metrics.to_dict()}, args.json)  # fmt: skip
    return 0


def add_predict_parser(sub: argparse._SubParsersAction) -> None:
    """``predict``: top-k cultivars for image files."""
    p = sub.add_parser("predict", help="top-k cultivars per image")
    p.add_argument("paths", nargs="+", type=Path)
    _model_args(p)
    p.add_argument("--top-k", type=int, default=5)
    p.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from ..images import BadImage, load_image
    from .predictor import Predictor, ServedModel
    from .transforms import eval_transform, preprocess_for

    version_id, built, manifest = _load(args)
    ratio = float((manifest.get("train_config") or {}).get("resize_ratio", 1.34))
    transform = eval_transform(preprocess_for(built.model, built.backbone.image_size, ratio))
    predictor = Predictor(args.data_dir, device=args.device)
    predictor.swap(ServedModel(built, version_id, list(manifest["class_names"]), transform, manifest))
    results, failed = [], 0
    for path in args.paths:
        try:
            image = load_image(path).image  # the safe loader: caps, allowlist, EXIF, RGB
        except (BadImage, OSError) as exc:
            results.append({"path": str(path), "error": str(exc)})
            failed += 1
            continue
        topk = predictor.predict([image], k=args.top_k)[0]
        results.append({"path": str(path), "topk": [{"label": c, "prob": round(p, 6)} for c, p in topk]})
    _print({"model_version": version_id, "predictions": results}, args.json)
    return 0 if not failed else 1


# -- reproduce -------------------------------------------------------------------------------------


def add_reproduce_parser(sub: argparse._SubParsersAction) -> None:
    """``reproduce``: the paper protocol on a raw UFG dataset, results next to the paper's."""
    from ..config import PAPER_BACKBONE

    p = sub.add_parser("reproduce", help="paper protocol on a UFG dataset; writes a results table")
    p.add_argument("--ufg-root", type=Path, required=True)
    p.add_argument("--dataset", required=True, help="cotton, soylocal, soyglobal, soygene, soyageing, soyageingr1..r6")
    p.add_argument("--variants", default="ila,ila+,ila++")
    _backbone_args(p, default_name=PAPER_BACKBONE, default_weights="hub")
    _recipe_args(p, "paper")
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="where default weights live")
    p.add_argument("--out", type=Path, default=Path("reproduce-results"))
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_reproduce)


def run_reproduce(args: argparse.Namespace) -> int:
    from .config import preset
    from .reproduce import reproduce

    progress = _Progress(enabled=not args.no_progress)
    try:
        report = reproduce(
            args.ufg_root, args.dataset, variants=[v.strip() for v in args.variants.split(",") if v.strip()],
            image_size=args.image_size, backbone=_backbone(args), config=preset(args.preset, **_train_overrides(args)),
            method_overrides=_method_overrides(args), out_dir=args.out, data_dir=args.data_dir, on_progress=progress,
        )  # fmt: skip
    finally:
        progress.close()
    _print(report, args.json)
    return 0


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
