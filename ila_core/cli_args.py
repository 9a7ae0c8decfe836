"""Argument groups and output helpers shared by the ``python -m ila_core`` commands of several packages."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["backbone_args", "backbone_from_args", "recipe_args", "train_overrides", "method_overrides", "Progress",
           "print_result"]  # fmt: skip


def backbone_args(p: argparse.ArgumentParser, *, default_name: str | None = None, default_weights: str = "default") -> None:
    from .config import DEFAULT_BACKBONE

    p.add_argument("--backbone", default=default_name or DEFAULT_BACKBONE, help="timm model name")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--weights", default=default_weights,
                   help="default (shipped DINOv2 ViT-S/14), hub, none (random init) or a safetensors file path")  # fmt: skip


def backbone_from_args(args: argparse.Namespace):
    from .config import BackboneConfig

    if args.weights in ("default", "hub", "none"):
        return BackboneConfig(name=args.backbone, image_size=args.image_size, weights=args.weights)
    return BackboneConfig(name=args.backbone, image_size=args.image_size, weights="file", weights_file=Path(args.weights))


def recipe_args(p: argparse.ArgumentParser, default_preset: str) -> None:
    p.add_argument("--preset", default=default_preset, choices=["quick", "paper"])
    p.add_argument("--epochs", type=int, help="count the run in epochs (the quick preset counts steps)")
    p.add_argument("--steps", type=int, help="total optimizer steps")
    p.add_argument("--minutes", type=float, help="wall-clock budget")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--ds-locations", help="0-based blocks after which DS-ILAs go, e.g. 3,7 (ViT-B/S) or 1,3 (6 blocks)")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache", dest="use_feature_cache", action="store_const", const=True)
    cache.add_argument("--no-cache", dest="use_feature_cache", action="store_const", const=False)


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("epochs", "steps", "minutes", "batch_size", "lr", "seed", "device", "use_feature_cache")
    return {k: getattr(args, k) for k in keys}


def method_overrides(args: argparse.Namespace) -> dict[str, Any]:
    if not args.ds_locations:
        return {}
    return {"ds_locations": [int(v) for v in args.ds_locations.split(",") if v.strip()]}


class Progress:
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


def print_result(obj: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj))
    else:
        for key, value in obj.items():
            print(f"{key}: {value}")
