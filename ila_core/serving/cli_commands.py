"""``python -m ila_core`` commands of the serving package: eval and predict, with a version as the app serves it."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli_args import print_result

__all__ = ["add_eval_parser", "run_eval", "add_predict_parser", "run_predict"]


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
    from ..store import LabelStore, default_store_path
    from .paths import checkpoint_path

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

    from ..store import LabelStore, default_store_path
    from ..training.dataset import ImageDataset, Sample, image_path
    from ..training.loop import evaluate
    from ..training.transforms import eval_transform, preprocess_for

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
    print_result({"model_version": version_id, "split": args.split, "skipped": len(chosen) - len(samples),
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
    from ..training.transforms import eval_transform, preprocess_for
    from .predictor import Predictor, ServedModel

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
    print_result({"model_version": version_id, "predictions": results}, args.json)
    return 0 if not failed else 1
