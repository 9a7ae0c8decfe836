"""ILA Studio web app: ``python app.py --data-dir data`` serves http://127.0.0.1:7860 .

A thin entry: flags -> :class:`~ila_core.config.AppConfig` + :class:`~ila_core.ui.StudioOptions` ->
:func:`ila_core.ui.build_app` -> ``launch`` with the secure settings of :mod:`ila_core.ui.launch`.
Binding an address other than loopback needs ``--auth USERS_FILE`` (lines ``name:password[:admin]``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub: never wait on it
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

_logger = logging.getLogger("ila_studio")


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags of the app."""
    p = argparse.ArgumentParser(
        prog="python app.py", description="ILA Studio: label, explain and retrain in the browser"
    )
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="images, store, adapters (default: data)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (other than loopback needs --auth)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", type=Path, default=None, metavar="USERS_FILE",
                   help="users file, one 'name:password[:admin]' per line (or set ILA_USERS on loopback)")  # fmt: skip
    p.add_argument("--import-root", type=Path, action="append", default=[], metavar="DIR",
                   help="a server folder admins may import from (repeatable; without one, server-path imports are off)")  # fmt: skip
    p.add_argument("--backbone", default=None, help="timm model name (default: the shipped DINOv2 ViT-S/14)")
    p.add_argument("--image-size", type=int, default=None, help="model input size (default: 224; 96 for test_vit)")
    p.add_argument("--weights", choices=["default", "none"], default="default",
                   help="'none' = random backbone, only for trying the app without weights")  # fmt: skip
    p.add_argument(
        "--no-worker", action="store_true", help="do not train inside the app (run `python -m ila_core worker`)"
    )
    p.add_argument("--no-demo", action="store_true", help="do not seed an empty data directory with the demo set")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, open the studio, launch; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    from ila_core.config import DEFAULT_BACKBONE, AppConfig, BackboneConfig
    from ila_core.ui import (
        Studio,
        StudioOptions,
        build_app,
        launch_settings,
        load_users,
        prepare_environment,
        queue_settings,
    )

    try:
        config = AppConfig(data_dir=args.data_dir, host=args.host, port=args.port, auth_file=args.auth)
        name = args.backbone or DEFAULT_BACKBONE
        size = args.image_size or (96 if name == "test_vit" else 224)
        backbone = BackboneConfig(name=name, image_size=size, weights=args.weights)
        roots = tuple(args.import_root)
        missing = [str(r) for r in roots if not r.is_dir()]
        if missing:
            raise ValueError(f"--import-root must name existing folders: {', '.join(missing)}")
        options = StudioOptions(backbone=backbone, start_worker=not args.no_worker, seed_demo=not args.no_demo,
                                import_roots=roots)  # fmt: skip
        users = load_users(args.auth)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    prepare_environment(config.data_dir)
    studio = Studio.open(config, options, users=users)
    try:
        demo = build_app(config, studio=studio)
        demo.queue(**queue_settings(config)).launch(**launch_settings(config, studio))
    finally:
        studio.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
