"""``python -m ila_core cka``: attention-map CKA of the plain backbone and of the ILA model on the same images.

Writes ``cka.png`` (the two heatmaps side by side) and ``cka.json`` (both matrices and the settings) to
``--out-dir`` (default ``<data-dir>/analysis``). Images come from the label store's labelled images
(``<data-dir>/ila.db``, files under ``<data-dir>/images``) or from a folder given with ``--images``.
The ILA model is either freshly built (``--variant``, untrained adapters) or a trained checkpoint
(``--checkpoint``, as in the paper's Fig. 3); the plain model is the same backbone with no adapters.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["add_cka_parser", "collect_image_paths", "run_cka"]

_logger = logging.getLogger(__name__)

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".gif"}


def add_cka_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``cka`` sub-command."""
    from ..config import DEFAULT_BACKBONE

    p = sub.add_parser("cka", help="CKA of attention maps, plain ViT vs ILA (paper Fig. 3)")
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--images", type=Path, default=None, help="folder of image files instead of the label store")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help="timm model name")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--weights", default="default", choices=["default", "hub", "file", "none"])
    p.add_argument("--weights-file", type=Path, default=None)
    p.add_argument("--variant", default="ila", help="method for the adapted model (ila, ila+, ila++, ...)")
    p.add_argument("--ds-locations", default=None, help="override DS-ILA blocks, e.g. 1,3 for a 6-block model")
    p.add_argument("--checkpoint", type=Path, default=None, help="trained adapter checkpoint (.safetensors)")
    p.add_argument("--batch-size", type=int, default=8, help="images per CKA minibatch (>= 4)")
    p.add_argument("--max-images", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.add_argument("--out-dir", type=Path, default=None, help="default: <data-dir>/analysis")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_cka)


def _stored_path(data_dir: Path, rel_path: str) -> Path:
    # the store's convention: rel_path is relative to the data dir, normally "images/<sha>.<ext>";
    # a bare name is looked up under <data_dir>/images
    rel = Path(rel_path)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"stored image path leaves the data directory: {rel_path!r}")
    return data_dir / rel if rel.parts and rel.parts[0] == "images" else data_dir / "images" / rel


def collect_image_paths(data_dir: Path, images: Path | None) -> list[Path]:
    """Image files from ``images`` (sorted, recursive) or the store's labelled images.

    Raises:
        ValueError: the folder or store does not exist, or holds no images.
    """
    if images is not None:
        if not images.is_dir():
            raise ValueError(f"--images {images} is not a folder")
        paths = sorted(p for p in images.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
    else:
        db = data_dir / "ila.db"
        if not db.exists():
            raise ValueError(f"no label store at {db}; pass --images DIR or --data-dir of an ILA Studio data folder")
        from ..store import LabelStore

        store = LabelStore.open(db)
        try:
            items = store.labelled_items()
        finally:
            store.close()
        paths = [_stored_path(data_dir, item.rel_path) for item in items]
    if not paths:
        raise ValueError("no images found for CKA")
    return paths


def _load_batches(paths: list[Path], model: torch.nn.Module, image_size: int, batch_size: int) -> list[torch.Tensor]:
    import timm.data

    from ..images import BadImage, load_image

    cfg = timm.data.resolve_model_data_config(model)
    cfg.update(input_size=(3, image_size, image_size), crop_pct=1.0)
    transform = timm.data.create_transform(**cfg, is_training=False)
    tensors = []
    for path in paths:
        try:
            tensors.append(transform(load_image(path).image))
        except (BadImage, OSError) as exc:
            _logger.warning("skipping %s: %s", path, exc)
    usable = len(tensors) - len(tensors) % batch_size if len(tensors) >= batch_size else 0
    if usable == 0:
        raise ValueError(f"CKA needs at least {batch_size} readable images (one full batch), got {len(tensors)}")
    return [torch.stack(tensors[i : i + batch_size]) for i in range(0, usable, batch_size)]


def _models(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, Any]]:
    from ..adapters import LinearProbeConfig, method_config
    from ..backbone import build_model
    from ..config import BackboneConfig

    if args.checkpoint is not None:
        from ..checkpoint import load_built, manifest_backbone

        built, manifest = load_built(args.checkpoint, args.data_dir)
        backbone = manifest_backbone(manifest)
        ila, method = built.model, built.method
    else:
        backbone = BackboneConfig(
            name=args.backbone, image_size=args.image_size, weights=args.weights, weights_file=args.weights_file
        )
        overrides = {}
        if args.ds_locations:
            overrides["ds_locations"] = tuple(int(v) for v in str(args.ds_locations).split(",") if v.strip())
        method = method_config(args.variant, **overrides)
        torch.manual_seed(args.seed)
        ila = build_model(backbone, method, num_classes=2, data_dir=args.data_dir).model
    plain = build_model(backbone, LinearProbeConfig(), num_classes=2, data_dir=args.data_dir).model
    from ..adapters import config_to_dict, variant_name

    info = {"backbone": backbone.name, "image_size": backbone.image_size, "weights": backbone.weights,
            "variant": variant_name(method) if args.checkpoint else args.variant, "method": config_to_dict(method), "checkpoint": str(args.checkpoint) if args.checkpoint else None}  # fmt: skip
    return plain, ila, info


def run_cka(args: argparse.Namespace) -> int:
    """Compute both CKA matrices, write ``cka.png`` and ``cka.json``; print a summary (JSON with ``--json``)."""
    from ..analysis.cka import cka_matrix
    from ..analysis.figures import cka_pair_figure

    if args.batch_size < 4:
        raise ValueError(f"--batch-size must be >= 4 for the unbiased CKA estimator, got {args.batch_size}")
    torch.manual_seed(args.seed)
    paths = collect_image_paths(args.data_dir, args.images)[: max(args.max_images, 0)]
    plain, ila, info = _models(args)
    batches = [b.to(args.device) for b in _load_batches(paths, plain, int(info["image_size"]), args.batch_size)]
    plain_cka = cka_matrix(plain.to(args.device), batches)
    ila_cka = cka_matrix(ila.to(args.device), batches)

    out_dir = args.out_dir or args.data_dir / "analysis"
    out_dir.mkdir(parents=True, exist_ok=True)
    png, js = out_dir / "cka.png", out_dir / "cka.json"
    fig = cka_pair_figure(plain_cka, ila_cka, titles=(f"{info['backbone']} (frozen)", f"+ {info['variant']}"))
    fig.savefig(png, dpi=150)
    off = ~np.eye(plain_cka.shape[0], dtype=bool)
    result = {
        **info,
        "num_images": sum(int(b.shape[0]) for b in batches),
        "batch_size": args.batch_size,
        "plain": plain_cka.tolist(),
        "ila": ila_cka.tolist(),
        "plain_mean_offdiag": float(np.nanmean(plain_cka[off])) if off.any() else None,
        "ila_mean_offdiag": float(np.nanmean(ila_cka[off])) if off.any() else None,
        "png": str(png),
        "json": str(js),
    }
    js.write_text(json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"CKA over {result['num_images']} images: mean off-diagonal plain {result['plain_mean_offdiag']:.3f}, "
              f"ILA {result['ila_mean_offdiag']:.3f}\nwrote {png}\nwrote {js}")  # fmt: skip
    return 0
