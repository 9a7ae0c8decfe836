"""Command line: ``python -m ila_core {info,weights,import,export,train,eval,predict,reproduce,worker,cka}``.

Each command prints JSON with ``--json`` (one object, or one line per item for streaming commands) and
human-readable text otherwise; progress goes to stderr. Heavy modules are imported by the command that
needs them, so ``--help`` and ``info`` stay fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["main", "build_parser"]

_logger = logging.getLogger(__name__)


def _add_info(sub: argparse._SubParsersAction) -> None:
    from .adapters import VARIANTS

    p = sub.add_parser("info", help="parameters, tokens per block and MACs of a configuration")
    p.add_argument("--backbone", default="vit_small_patch14_dinov2", help="timm model name")
    p.add_argument("--variant", default="ila", choices=list(VARIANTS))
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--weights", default="none", choices=["default", "hub", "file", "none"],
                   help="accepted for symmetry with train; counting never loads weights")  # fmt: skip
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from .accounting import stats_for
    from .adapters import method_config
    from .config import BackboneConfig

    backbone = BackboneConfig(name=args.backbone, image_size=args.image_size, weights="none")
    stats = stats_for(backbone, method_config(args.variant), args.num_classes).to_dict()
    stats.update(backbone=args.backbone, variant=args.variant, num_classes=args.num_classes)
    if args.json:
        print(json.dumps(stats))
    else:
        print(f"{args.variant} on {args.backbone} at {args.image_size} px, {args.num_classes} classes")
        print(f"  trainable parameters  {stats['trainable_params']:,}")
        print(f"  total parameters      {stats['total_params']:,}")
        print(f"  tokens per block      {stats['tokens_per_block']}")
        print(f"  MACs (batch 1)        {stats['macs'] / 1e9:.3f} G")
    return 0


def _add_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="install or verify the default backbone weights")
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_weights)


def _run_weights(args: argparse.Namespace) -> int:
    from .weights import ensure_default_weights

    info = ensure_default_weights(args.data_dir)
    out = {"path": str(info.path), "sha256": info.sha256, "model": info.model_name, "source": info.source}
    print(json.dumps(out) if args.json else f"{info.path}\nsha256 {info.sha256}")
    return 0


def _optional_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Parsers contributed by the data, training and analysis packages."""
    adders = []
    for module, names in (
        ("ila_core.data.cli_commands", ("add_import_parser", "add_export_parser", "add_seed_parser")),
        ("ila_core.jobs.cli_commands", ("add_train_parser",)),
        ("ila_core.serving.cli_commands", ("add_eval_parser", "add_predict_parser")),
        ("ila_core.training.cli_commands", ("add_reproduce_parser",)),
        ("ila_core.jobs.cli_commands", ("add_worker_parser",)),
        ("ila_core.analysis.cli_commands", ("add_cka_parser",)),
    ):  # fmt: skip
        try:
            mod = __import__(module, fromlist=list(names))
        except ImportError as e:  # pragma: no cover - only while a package is being built
            _logger.debug("commands from %s unavailable: %s", module, e)
            continue
        adders.extend(getattr(mod, n) for n in names if hasattr(mod, n))
    return adders


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m ila_core`` argument parser."""
    parser = argparse.ArgumentParser(prog="python -m ila_core", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_info(sub)
    _add_weights(sub)
    for add in _optional_commands():
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, RuntimeError, OSError) as e:
        # a clear one-line error for the user; the traceback only with --verbose
        _logger.debug("command failed", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return 2
