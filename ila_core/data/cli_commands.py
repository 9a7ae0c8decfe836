"""``python -m ila_core import|export|seed``: the data commands of the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_import_parser", "add_export_parser", "add_seed_parser"]


def add_import_parser(sub: argparse._SubParsersAction) -> None:
    from .layouts import FORMATS

    p = sub.add_parser("import", help="import images (ImageFolder, CSV, zip, UFG, FiftyOne, COCO, Hugging Face "
                       "imagefolder) or the annotations of a Label Studio export")  # fmt: skip
    p.add_argument("path", type=Path)
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--format", default="auto", choices=list(FORMATS),
                   help="auto detects the layout and names it in the summary; imagefolder reads folder names "
                   "even where the tree holds label files")  # fmt: skip
    p.add_argument("--split", choices=["train", "holdout"], default=None, help="override the layout's split")
    p.add_argument("--user", default=None)
    p.add_argument("--json", action="store_true", help="one JSON line per file, then a summary line")
    p.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    """Stream one result per file; exit 0 unless the import itself could not run."""
    from tqdm import tqdm

    from .importers import import_path, summarise

    results = []
    with tqdm(desc="import", unit="file", disable=None) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        for r in import_path(args.path, args.data_dir, fmt=args.format, user=args.user, split=args.split,
                             on_progress=progress):  # fmt: skip
            results.append(r)
            if args.json:
                print(json.dumps(r.as_dict(), ensure_ascii=False), flush=True)
            elif r.status == "rejected":
                bar.write(f"rejected {r.file}: {r.reason}")
    summary = summarise(results)
    print(json.dumps({"summary": summary}) if args.json else f"summary: {summary}")
    return 0


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    from .exporters import EXPORT_FORMATS, LABEL_STUDIO_PREFIX

    p = sub.add_parser("export", help="export labels (ImageFolder tree, CSV, full history, Label Studio JSON)")
    p.add_argument("out", type=Path)
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--format", default="csv", choices=list(EXPORT_FORMATS))
    p.add_argument("--image-url-prefix", default=LABEL_STUDIO_PREFIX,
                   help="labelstudio: prepended to each image path relative to the data directory (default: "
                   "Label Studio Local Storage with LOCAL_FILES_DOCUMENT_ROOT = the data directory)")  # fmt: skip
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from .exporters import export

    summary = export(args.data_dir, args.out, fmt=args.format, image_url_prefix=args.image_url_prefix)
    print(json.dumps({"summary": summary}) if args.json else f"summary: {summary}")
    return 0


def add_seed_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("seed", help="add the synthetic demo cultivars to a data directory")
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--cultivars", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--train-per-class", type=int, default=16)
    p.add_argument("--holdout-per-class", type=int, default=6)
    p.add_argument("--pool-per-class", type=int, default=4)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_seed)


def run_seed(args: argparse.Namespace) -> int:
    from .demo import seed_demo_set
    from .synthetic import SyntheticConfig

    cfg = SyntheticConfig(num_cultivars=args.cultivars, image_size=args.image_size)
    summary = seed_demo_set(args.data_dir, cfg, train_per_class=args.train_per_class,
                            holdout_per_class=args.holdout_per_class, pool_per_class=args.pool_per_class)  # fmt: skip
    print(json.dumps({"summary": summary}) if args.json else f"summary: {summary}")
    return 0
