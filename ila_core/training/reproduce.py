"""Reproduce the paper's protocol on the raw UFG benchmark folders and tabulate against its numbers.

Protocol (ILA_SPEC 3): train on the full official train split, evaluate once after the last epoch on the
official test split, with the paper recipe (or overrides). The UFG raw layouts (flat
``<class>_<index>_<train|test>.png`` folders, ``images/`` + ``anno/{train,test}.txt``, and the SoyAgeing
``R1..R6`` subfolders) are parsed by :func:`ila_core.data.layouts.plan`; nothing is imported into a store.

Results go to ``<out>/reproduce_<dataset>_<size>.json`` and ``.md`` next to the paper's numbers: Table 1
(448 px, ILA+ and ILA++, five datasets) and the ten-dataset means read off the paper's plot (ILA_SPEC 5.1,
5.2, 8.12). Per-dataset 224 px numbers are in the paper body, which was not available, so they are "n/a".
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..adapters import method_config
from ..config import BackboneConfig
from ..fsutil import sha256_file
from .config import TrainConfig
from .dataset import Sample, TrainingSet
from .fit import fit, prepare_model

__all__ = ["PAPER_TABLE1_448", "PAPER_TEN_DATASET_MEAN", "DATASET_FOLDERS", "find_dataset", "load_ufg", "reproduce",
           "render_markdown"]  # fmt: skip

_logger = logging.getLogger(__name__)

# ILA_SPEC 5.1: Table 1, 448 px top-1 (%).
PAPER_TABLE1_448: dict[str, dict[str, float]] = {
    "ila+": {"cotton": 53.33, "soyageing": 68.79, "soygene": 52.65, "soyglobal": 48.29, "soylocal": 46.56},
    "ila++": {"cotton": 55.42, "soyageing": 75.00, "soygene": 62.19, "soyglobal": 58.14, "soylocal": 50.83},
}
# ILA_SPEC 5.2 / 8.12: ten-dataset average top-1 (%) read off the README plot (about +-0.1).
PAPER_TEN_DATASET_MEAN: dict[str, dict[int, float]] = {
    "ila": {224: 53.1},
    "ila+": {224: 56.3, 448: 63.4},
    "ila++": {224: 59.2, 448: 67.6},
}
# Folder names of the UFG release (ILA_SPEC 4), plus plain names.
DATASET_FOLDERS: dict[str, tuple[str, ...]] = {
    "cotton": ("cotton_square_new", "Cotton80", "cotton80", "cotton"),
    "soylocal": ("soybean200_square", "SoyLocal", "soylocal"),
    "soyglobal": ("soybean2000", "SoyGlobal", "soyglobal"),
    "soygene": ("soybean_gene", "SoyGene", "soygene"),
    "soyageing": ("soybean_ageing", "SoyAgeing", "soyageing"),
}
_AGEING_SUBSETS = {f"soyageingr{i}": f"R{i}" for i in (1, 3, 4, 5, 6)}  # there is no R2
# The raw layout of each release (ILA_SPEC 4): a root that *is* a dataset must be the one asked for.
_LAYOUTS = {"cotton": "ufg-flat", "soylocal": "ufg-flat", "soyglobal": "ufg-flat", "soygene": "ufg-anno",
            "soyageing": "ufg-ageing"}  # fmt: skip


def find_dataset(ufg_root: Path, dataset: str) -> Path:
    """The folder holding ``dataset`` under ``ufg_root`` (or ``ufg_root`` itself if it is that dataset).

    Raises:
        ValueError: unknown dataset name, or no matching folder.
    """
    from ..data.layouts import detect_layout

    name = dataset.lower()
    root = Path(ufg_root)
    if name in _AGEING_SUBSETS:
        if root.name.upper() == _AGEING_SUBSETS[name] and detect_layout(root) == "ufg-anno":
            return root  # pointed at the stage folder itself
        ageing = find_dataset(root, "soyageing")
        sub = ageing / _AGEING_SUBSETS[name]
        if not sub.is_dir():
            raise ValueError(f"{sub} not found (SoyAgeing subsets are R1, R3, R4, R5, R6)")
        return sub
    if name not in DATASET_FOLDERS:
        raise ValueError(f"unknown UFG dataset {dataset!r}; choose one of {', '.join([*DATASET_FOLDERS, *_AGEING_SUBSETS])}")
    for folder in DATASET_FOLDERS[name]:
        if (root / folder).is_dir():
            return root / folder
    layout = detect_layout(root) if root.is_dir() else None
    if layout == _LAYOUTS[name]:
        return root
    hint = f"; {root} itself is a {layout} folder, not {dataset}" if layout and layout.startswith("ufg") else ""
    raise ValueError(f"no folder for {dataset} under {root} (looked for {', '.join(DATASET_FOLDERS[name])}){hint}")


def load_ufg(folder: Path) -> TrainingSet:
    """Official train and test splits of one UFG dataset folder as a :class:`TrainingSet`.

    Raises:
        ValueError: not a UFG layout, or no usable training files.
    """
    from ..data.layouts import plan

    planned = plan(Path(folder), "ufg")
    items = [it for it in planned if it.error is None and it.path is not None and it.label]
    bad = sum(1 for it in planned if it.error is not None)
    if bad:
        _logger.warning("%s: %d files ignored (not in the UFG layout)", folder, bad)
    class_names = sorted({it.label for it in items if it.split == "train"})
    index = {c: i for i, c in enumerate(class_names)}

    def samples(split: str) -> list[Sample]:
        return [Sample(it.path, index[it.label], sha256_file(it.path)) for it in items
                if it.split == split and it.label in index]  # fmt: skip

    return TrainingSet(class_names, samples("train"), samples("holdout"), None, {"not in layout": bad} if bad else {})


@dataclass(frozen=True)
class _Row:
    variant: str
    top1: float
    top5: float
    macro_f1: float
    epochs: int
    seconds: float
    trainable_params: int


def _paper(variant: str, dataset: str, image_size: int) -> float | None:
    if image_size == 448:
        return PAPER_TABLE1_448.get(variant, {}).get(dataset.lower())
    return None


def reproduce(
    ufg_root: Path,
    dataset: str,
    *,
    variants: Sequence[str] = ("ila", "ila+", "ila++"),
    image_size: int = 224,
    backbone: BackboneConfig | None = None,
    config: TrainConfig | None = None,
    method_overrides: dict[str, Any] | None = None,
    out_dir: Path = Path("reproduce-results"),
    data_dir: Path | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train each variant with the paper protocol on ``dataset`` and write the results table.

    Args:
        ufg_root: folder holding the UFG datasets (or one dataset's folder).
        dataset: cotton, soylocal, soyglobal, soygene, soyageing, soyageingr1/r3/r4/r5/r6.
        variants: method names.
        image_size: 224 or 448 (any size the backbone accepts works).
        backbone: defaults to the paper's ViT-B/16 ImageNet-21k from the hub.
        config: the recipe (default: the paper preset).
        method_overrides: method config fields (e.g. ``ds_locations`` for a smaller ViT).
        out_dir: where the JSON and markdown go.
        data_dir: where default backbone weights live.
        on_progress: training progress callback.

    Returns:
        The JSON written (rows per variant with the paper's number next to ours).
    """
    from ..config import PAPER_BACKBONE

    folder = find_dataset(ufg_root, dataset)
    data = load_ufg(folder)
    bb = backbone or BackboneConfig(name=PAPER_BACKBONE, image_size=image_size, weights="hub")
    if bb.image_size != image_size:
        bb = BackboneConfig(name=bb.name, image_size=image_size, weights=bb.weights, weights_file=bb.weights_file)
    config = config or TrainConfig()
    rows = []
    for variant in variants:
        method = method_config(variant, **(method_overrides or {}))
        built = prepare_model(bb, method, len(data.class_names), config, data_dir=data_dir)
        trainable = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
        start = time.perf_counter()
        _logger.info("reproduce %s / %s at %d px: %d train, %d test images, %d classes", dataset, variant, image_size,
                     len(data.train), len(data.holdout), len(data.class_names))  # fmt: skip
        result = fit(built, data, config, on_progress=on_progress)
        m = result.metrics
        rows.append(_Row(variant, m.top1 if m else float("nan"), m.top5 if m else float("nan"),
                         m.macro_f1 if m else float("nan"), result.epochs, time.perf_counter() - start, trainable))  # fmt: skip
    report = {
        "dataset": dataset,
        "folder": str(folder),
        "image_size": image_size,
        "backbone": bb.name,
        "protocol": "train on the official train split, evaluate once after the last epoch on the official test split",
        "train_config": config.to_dict(),
        "num_classes": len(data.class_names),
        "train_images": len(data.train),
        "test_images": len(data.holdout),
        "rows": [
            {"variant": r.variant, "top1": round(100 * r.top1, 2), "top5": round(100 * r.top5, 2),
             "macro_f1": round(100 * r.macro_f1, 2), "paper_top1": _paper(r.variant, dataset, image_size),
             "paper_ten_dataset_mean": PAPER_TEN_DATASET_MEAN.get(r.variant, {}).get(image_size),
             "epochs": r.epochs, "seconds": round(r.seconds, 1), "trainable_params": r.trainable_params}
            for r in rows
        ],  # fmt: skip
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"reproduce_{dataset.lower()}_{image_size}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(render_markdown(report))
    report["paths"] = [str(stem.with_suffix(".json")), str(stem.with_suffix(".md"))]
    return report


def render_markdown(report: dict[str, Any]) -> str:
    """The results table as markdown, ours next to the paper's."""
    def num(v: Any) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    lines = [
        f"# {report['dataset']} at {report['image_size']} px ({report['backbone']})",
        "",
        f"{report['train_images']} train / {report['test_images']} test images, {report['num_classes']} classes. "
        f"Protocol: {report['protocol']}.",
        "",
        "| variant | top-1 (ours) | top-1 (paper) | paper ten-dataset mean | top-5 | macro-F1 | epochs | trainable params |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['variant']} | {num(r['top1'])} | {num(r['paper_top1'])} | {num(r['paper_ten_dataset_mean'])} "
                     f"| {num(r['top5'])} | {num(r['macro_f1'])} | {r['epochs']} | {r['trainable_params']:,} |")  # fmt: skip
    lines += ["", "Paper: Table 1 (448 px) and the ten-dataset means read off the README plot (ILA_SPEC 5.1, 5.2). "
              "Per-dataset 224 px numbers are in the paper body, not available here.", ""]  # fmt: skip
    return "\n".join(lines)
