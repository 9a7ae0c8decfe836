"""``python -m ila_core`` commands of the training package: reproduce (the paper protocol on a UFG dataset)."""

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

__all__ = ["add_reproduce_parser", "run_reproduce"]


# -- reproduce -------------------------------------------------------------------------------------


def add_reproduce_parser(sub: argparse._SubParsersAction) -> None:
    """``reproduce``: the paper protocol on a raw UFG dataset, results next to the paper's."""
    from ..config import PAPER_BACKBONE

    p = sub.add_parser("reproduce", help="paper protocol on a UFG dataset; writes a results table")
    p.add_argument("--ufg-root", type=Path, required=True)
    p.add_argument("--dataset", required=True, help="cotton, soylocal, soyglobal, soygene, soyageing, soyageingr1..r6")
    p.add_argument("--variants", default="ila,ila+,ila++")
    backbone_args(p, default_name=PAPER_BACKBONE, default_weights="hub")
    recipe_args(p, "paper")
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="where default weights live")
    p.add_argument("--out", type=Path, default=Path("reproduce-results"))
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_reproduce)


def run_reproduce(args: argparse.Namespace) -> int:
    from .config import preset
    from .reproduce import reproduce

    progress = Progress(enabled=not args.no_progress)
    try:
        report = reproduce(
            args.ufg_root, args.dataset, variants=[v.strip() for v in args.variants.split(",") if v.strip()],
            image_size=args.image_size, backbone=backbone_from_args(args), config=preset(args.preset, **train_overrides(args)),
            method_overrides=method_overrides(args), out_dir=args.out, data_dir=args.data_dir, on_progress=progress,
        )  # fmt: skip
    finally:
        progress.close()
    print_result(report, args.json)
    return 0
