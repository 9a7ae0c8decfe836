"""Quick-recipe study (issue 10, section 3): the probe, ILA at the paper's placement and recipe candidates.

Every candidate is trained on several seeds of the project's synthetic cultivar generator at several sizes and
scored on a holdout split it never sees while training (the probe's ridge penalty and the LP-FT head are
chosen by cross-validation on the train split only)::

    python -m bench.bench_recipe --data-dir /tmp/recipe-data                 # the study (tens of minutes)
    python -m bench.bench_recipe --quick --data-dir /tmp/recipe-data         # smoke run, < 2 minutes
    python -m bench.bench_recipe --seeds 0,1 --sizes 6x8 --candidates probe,late-lpft

Cost is kept down by running the frozen backbone once per (seed, size): a plain copy of the backbone runs
every (image, view) block by block and keeps the tokens at each cut a candidate needs (the cut before its
first adapter, and the last block for the probe). Each ILA run gets those tokens pre-loaded into its
frozen-prefix :class:`~ila_core.training.feature_cache.FeatureCache`, so ``fit`` finds every entry and only
trains. ``est_job_s`` adds back what a real job would spend filling its own prefix (that share of the
backbone pass), so the 10-minute criterion is judged on the whole job.

Wide candidates run at every size; the others only at ``--narrow-sizes`` (default: the first size), and a
candidate with ``seeds=n`` only on the first n of ``--seeds``: on 2 busy CPU cores one 120-step ILA run after
block 9 takes about 3 minutes, so screening runs get fewer seeds (the table's ``seeds`` column says how many).
Results are appended to ``bench/results/recipe.json`` after every run (a cut-off study keeps what it measured;
``--resume`` skips runs already there).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from bench.common import RESULTS, machine
from ila_core.adapters import method_config
from ila_core.checkpoint import backbone_identity
from ila_core.config import BackboneConfig
from ila_core.data.synthetic import SyntheticConfig, cultivar_names, write_demo_set
from ila_core.embeddings import Embedder, build_embedder
from ila_core.training import fit as fit_module
from ila_core.training.config import preset
from ila_core.training.dataset import Sample, TrainingSet, open_rgb
from ila_core.training.feature_cache import CachedFeatures, FeatureCache, plan_prefix
from ila_core.training.metrics import MetricAccumulator
from ila_core.training.model_setup import prepare_model
from ila_core.training.probe import fit_probe
from ila_core.training.transforms import preprocess_for

_logger = logging.getLogger("bench.bench_recipe")
OUT = RESULTS / "recipe.json"


@dataclass(frozen=True)
class Candidate:
    """One recipe: the quick preset plus overrides, or the closed-form probe (``placement=None``)."""

    name: str
    note: str
    placement: str | None = None  # "paper" (3, 7), "late" (9, 10), "last" (10, 11) on 12 blocks; None = probe
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides on preset("quick")
    method: dict[str, Any] = field(default_factory=dict)  # ILAConfig overrides
    optimizer: str = "sgd"  # "sgd" (Nesterov, as fit builds it) or "adamw" (same groups, see _adamw)
    wide: bool = False  # run at every size (else only at --narrow-sizes)
    seeds: int | None = None  # at most this many of --seeds (the first ones); None = all
    pooled: str = "cls"  # probe features: "cls" (what the served head reads) or "cls+mean" (plus mean patch token)


_BASE = {"steps": 120, "lp_init": True}
CANDIDATES: dict[str, Candidate] = {c.name: c for c in [  # in priority order: a cut-off study keeps the first
    Candidate("probe", "ridge on frozen CLS, alpha by CV on train", wide=True),
    Candidate("probe-cm", "reference: ridge on frozen [CLS, mean patch] (not servable by a timm head)",
              pooled="cls+mean", wide=True),
    Candidate("late-lpft", "DS (9,10), 120 steps, LP-FT head", "late", _BASE, wide=True),
    Candidate("late", "DS (9,10), 120 steps, random head", "late", {"steps": 120}, wide=True),
    Candidate("late-lp0", "control: DS (9,10), LP-FT head, 1 step at lr 1e-4 (the head alone)", "late",
              {"steps": 1, "lp_init": True, "lr": 1e-4, "warmup_steps": 0, "min_lr": 1e-4}, wide=True),
    Candidate("paper-quick", "DS (3,7), quick preset as shipped (8 epochs)", "paper", seeds=2),
    Candidate("paper-lpft", "DS (3,7), quick preset + LP-FT head", "paper", {"lp_init": True}, seeds=2),
    Candidate("last-lpft", "DS (10,11), 120 steps, LP-FT head", "last", _BASE, seeds=2),
    Candidate("late-lpft-adamw", "as late-lpft, AdamW lr 1e-3", "late",
              {**_BASE, "lr": 1e-3, "warmup_lr": 1e-5, "min_lr": 1e-5}, optimizer="adamw", seeds=2),
    Candidate("late-lpft-alr5", "as late-lpft, head lr 0.02, adapters 0.1", "late",
              {**_BASE, "lr": 0.02, "adapter_lr_scale": 5.0}, seeds=2),
    Candidate("late-lpft-b32", "as late-lpft, bottleneck 32", "late", _BASE, {"bottleneck_dim": 32}, seeds=2),
    Candidate("late-lpft-60", "as late-lpft, 60 steps", "late", {**_BASE, "steps": 60}, seeds=2),
    Candidate("late-lpft-240", "as late-lpft, 240 steps", "late", {**_BASE, "steps": 240}, seeds=2),
    Candidate("late-lpft-ones", "as late-lpft, shortcut exactly ones", "late", _BASE, {"shortcut_init": "ones"},
              seeds=2),
    # LP-FT trains with a small rate so the closed-form head is not undone while the features move (Kumar et al.).
    Candidate("late-lpft-slowhead", "as late-lpft, head lr 0.005, adapters 0.05", "late",
              {**_BASE, "lr": 0.005, "adapter_lr_scale": 10.0}, seeds=3),
    Candidate("late-lpft-lr01", "as late-lpft, lr 0.01 for head and adapters", "late", {**_BASE, "lr": 0.01},
              seeds=3),
    Candidate("late-lpft-refit", "as late-lpft, then the head refitted in closed form on the trained features",
              "late", {**_BASE, "refit_head": True}, seeds=3),
    # The cached fixed views make the training set easy: the LP-FT head fits it at once and the steps have little
    # to learn from. Random crops (the paper's) cost the frozen blocks at every step, but keep the set hard.
    Candidate("late-lpft-aug", "as late-lpft, uncached: random crop + flip at every step", "late",
              {**_BASE, "use_feature_cache": False}),
    Candidate("late-lpft-aug-240", "as late-lpft-aug, 240 steps", "late",
              {**_BASE, "use_feature_cache": False, "steps": 240}),
    # The same crops, drawn once per view and cached: each image gets 6 fixed random crops (+ flip) besides its
    # centre and mirror views, one prefix pass each (filled inside the run, so its job seconds include them).
    Candidate("late-lpft-crops6-240", "as late-lpft, 240 steps over 6 cached random-crop views + centre + mirror",
              "late", {**_BASE, "crop_views": 6, "steps": 240}),
    Candidate("late-lpft-crops6-480", "as late-lpft-crops6-240, 480 steps", "late",
              {**_BASE, "crop_views": 6, "steps": 480}),
]}  # fmt: skip
QUICK = {"probe": {}, "paper-quick": {"steps": 2}, "late-lpft": {"steps": 2}}  # smoke: 2 steps each


def placement(name: str, depth: int) -> tuple[int, int]:
    """DS-ILA block indices for a ``depth``-block ViT: (3, 7), (9, 10), (10, 11) at depth 12."""
    return {"paper": (depth // 3 - 1, 2 * depth // 3 - 1), "late": (depth - 3, depth - 2),
            "last": (depth - 2, depth - 1)}[name]  # fmt: skip


@dataclass(frozen=True)
class Size:
    """Cultivars x training images per cultivar (and holdout images per cultivar)."""

    cultivars: int
    per_class: int
    holdout: int

    @classmethod
    def parse(cls, text: str, holdout: int) -> Size:
        """``"6x8"`` or ``"48x4:4"`` (holdout per cultivar after the colon)."""
        dims, _, hold = text.partition(":")
        k, n = (int(v) for v in dims.lower().split("x"))
        return cls(k, n, int(hold) if hold else holdout)

    def label(self) -> str:
        return f"{self.cultivars}x{self.per_class}"


def _dataset(work: Path, seed: int, size: Size, render_px: int) -> TrainingSet:
    """Render (or reuse) one seeded synthetic set and list its samples."""
    config = SyntheticConfig(num_cultivars=size.cultivars, image_size=render_px, seed=seed)
    root = work / f"s{seed}-k{size.cultivars}-n{size.per_class}-h{size.holdout}-px{render_px}"
    if not (root / "synthetic.json").is_file():
        write_demo_set(root, config, train_per_class=size.per_class, holdout_per_class=size.holdout, pool_per_class=0)
    names = cultivar_names(config)

    def samples(split: str) -> list[Sample]:
        out = []
        for k, name in enumerate(names):
            for path in sorted((root / split / name).glob("*.png")):
                out.append(Sample(path=path, label=k, sha256=hashlib.sha256(path.read_bytes()).hexdigest()))
        return out

    return TrainingSet(class_names=names, train=samples("train"), holdout=samples("holdout"))


@torch.no_grad()
def _token_bank(embedder: Embedder, data: TrainingSet, cuts: set[int], batch: int = 32) -> dict[int, dict]:
    """Plain-backbone tokens after block ``c`` for every cut c: ``{c: {(sha256, view): fp16 tokens}}``.

    Train images under both fixed views, holdout images under view 0; one pass through the blocks.
    """
    model, bank = embedder.model, {c: {} for c in cuts}
    jobs = [(s, v) for v in (0, 1) for s in data.train] + [(s, 0) for s in data.holdout]
    last = max(cuts)
    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        x = torch.stack([embedder.transform(v)(open_rgb(s.path)) for s, v in chunk])
        x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        for i, blk in enumerate(list(model.blocks)[: last + 1]):
            x = blk(x)
            if i in cuts:
                for (s, v), t in zip(chunk, x.to(torch.float16), strict=True):
                    bank[i][(s.sha256, v)] = t.clone()
    return bank


def _probe(embedder: Embedder, data: TrainingSet, bank: dict[int, dict], seed: int,
           pooled: str = "cls") -> dict[str, Any]:
    """Closed-form ridge head on pooled features (both train views, one CV group per image); holdout top-1."""
    model, tokens = embedder.model, bank[len(embedder.model.blocks) - 1]

    def feats(samples: list[Sample], view: int) -> torch.Tensor:
        x = model.norm(torch.stack([tokens[(s.sha256, view)] for s in samples]).float())
        cls = model.forward_head(x, pre_logits=True)
        return cls if pooled == "cls" else torch.cat([cls, x[:, model.num_prefix_tokens :].mean(1)], dim=1)

    t0 = time.perf_counter()
    with torch.no_grad():
        train = torch.cat([feats(data.train, 0), feats(data.train, 1)])
        labels = torch.tensor([s.label for s in data.train]).repeat(2)
        groups = torch.arange(len(data.train)).repeat(2)
        probe = fit_probe(train, labels, len(data.class_names), groups=groups, seed=seed)
        acc = MetricAccumulator(len(data.class_names))
        acc.update(probe.logits(feats(data.holdout, 0)), torch.tensor([s.label for s in data.holdout]))
    m = acc.compute(data.class_names)
    seconds = time.perf_counter() - t0
    return {"top1": m.top1, "macro_f1": m.macro_f1, "steps": 0, "train_s": round(seconds, 2),
            "fit_s": round(seconds, 2), "start_cv_top1": round(probe.cv_top1, 4), "alpha": probe.alpha}  # fmt: skip


@contextlib.contextmanager
def _adamw() -> Iterator[None]:
    """Inside the block ``fit`` builds AdamW over the parameter groups (and lr scales) it would give SGD."""
    original = fit_module.build_optimizer

    def build(net: torch.nn.Module, **kwargs: Any) -> torch.optim.Optimizer:
        sgd = original(net, **kwargs)
        groups = [{k: g[k] for k in ("params", "weight_decay", "lr_scale")} for g in sgd.param_groups]
        return torch.optim.AdamW(groups, lr=kwargs["lr"])

    fit_module.build_optimizer = build
    try:
        yield
    finally:
        fit_module.build_optimizer = original


def _ila(cand: Candidate, backbone: BackboneConfig, data: TrainingSet, bank: dict[int, dict], seed: int,
         args: argparse.Namespace, depth: int, overrides: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Train one ILA candidate with its prefix tokens pre-loaded; holdout metrics and timings."""
    locs = placement(cand.placement, depth)
    train = {"minutes": args.run_minutes, **cand.train, **overrides, "seed": seed}
    if cand.name == "paper-quick" and "steps" not in overrides:
        train.pop("minutes")  # exactly the shipped preset, its own 4-minute budget included
    config = preset("quick", **train)
    method = method_config("ila", ds_locations=locs, **cand.method)
    built = prepare_model(backbone, method, len(data.class_names), config, data_dir=args.data_dir)
    model, plan = built.model, plan_prefix(built.model)
    if plan is None or plan.embed_only or plan.full_blocks != locs[0] or not plan.split_block:
        raise RuntimeError(f"unexpected prefix plan {plan} for {locs}")
    prep = preprocess_for(model, config.image_size or built.backbone.image_size, config.resize_ratio)
    ident = backbone_identity(built)  # what fit keys its cache with
    cache = FeatureCache(max_memory_mb=8192)
    keys = CachedFeatures(model, plan, prep, cache, ident)
    for (sha, view), t in bank[locs[0]].items():
        cache.put(keys.key(Sample(Path("."), 0, sha), view), t)
    with _adamw() if cand.optimizer == "adamw" else contextlib.nullcontext():
        result = fit_module.fit(built, data, config, cache=cache)
    if cache.stats()["misses"] and not config.crop_views:  # crop views are not in the bank: fit fills them
        _logger.warning("%s: %d prefix entries were recomputed", cand.name, cache.stats()["misses"])
    return {"top1": result.metrics.top1, "macro_f1": result.metrics.macro_f1, "steps": result.steps,
            "steps_requested": result.steps_requested, "budget_cut": result.budget_cut,
            "train_s": result.train_seconds, "fit_s": round(result.seconds, 2), "ds_locations": list(locs),
            "start_cv_top1": None if result.head_init is None else round(result.head_init["cv_top1"], 4)}  # fmt: skip


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def summarise(runs: list[dict[str, Any]], budget_s: float = 600.0, aim: float = 0.05) -> list[dict[str, Any]]:
    """One row per (candidate, size): top-1 mean and std over seeds, paired delta vs the probe, seconds."""
    probe = {(r["size"], r["seed"]): r["top1"] for r in runs if r["candidate"] == "probe"}
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["candidate"], r["size"]), []).append(r)
    order = {name: i for i, name in enumerate(CANDIDATES)}
    rows = []
    def key(item: tuple[tuple[str, str], list]) -> tuple:
        (name, size), _ = item
        return tuple(int(v) for v in size.split("x")), order.get(name, 99), name

    for (name, size), rs in sorted(groups.items(), key=key):
        top = [r["top1"] for r in rs]
        deltas = [r["top1"] - probe[(size, r["seed"])] for r in rs if (size, r["seed"]) in probe]
        sd = statistics.stdev(top) if len(top) > 1 else 0.0
        dsd = statistics.stdev(deltas) if len(deltas) > 1 else 0.0
        job = statistics.mean(r["est_job_s"] for r in rs)
        dmean = statistics.mean(deltas) if deltas else None
        rows.append({"candidate": name, "size": size, "seeds": len(rs),
                     "top1": f"{statistics.mean(top):.3f} ± {sd:.3f}",
                     "delta_vs_probe": "" if dmean is None else f"{dmean:+.3f} ± {dsd:.3f}",
                     "train_s": round(statistics.mean(r["train_s"] for r in rs), 1), "est_job_s": round(job, 1),
                     "steps": round(statistics.mean(r["steps"] for r in rs)),
                     "meets_aim": bool(dmean is not None and name != "probe" and dmean >= aim and job <= budget_s),
                     "top1_mean": round(statistics.mean(top), 4),
                     "delta_mean": None if dmean is None else round(dmean, 4)})  # fmt: skip
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`summarise` rows."""
    out = ["| candidate | cultivars x imgs | seeds | top-1 mean ± std | Δ vs probe (paired) | steps | train s "
           "| est. job s |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        out.append(f"| {r['candidate']} | {r['size']} | {r['seeds']} | {r['top1']} | {r['delta_vs_probe']} | "
                   f"{r['steps']} | {r['train_s']} | {r['est_job_s']} |")  # fmt: skip
    return "\n".join(out)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, help="where the default weights are converted (<dir>/weights)")
    p.add_argument("--backbone", default="vit_small_patch14_dinov2")
    p.add_argument("--weights", default="default", choices=["default", "hub", "none"])
    p.add_argument("--image-size", type=int, default=224, help="backbone input size")
    p.add_argument("--render-px", type=int, default=224, help="generator output size (transforms resize)")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--sizes", default="6x8,16x4,6x32,48x4:4", help="KxN[:H], H holdout per cultivar")
    p.add_argument("--narrow-sizes", help="sizes for the non-wide candidates (default: the first of --sizes)")
    p.add_argument("--holdout-per-class", type=int, default=8)
    p.add_argument("--candidates", help="comma list (default: all); see CANDIDATES")
    p.add_argument("--run-minutes", type=float, default=8.0, help="per-run training-time cap")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work-dir", type=Path, help="rendered sets (default: <data-dir or /tmp>/recipe-sets)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--resume", action="store_true", help="skip (candidate, size, seed) runs already in --out")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 3x2 cultivars, 3 candidates, 2 steps")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.sizes, args.holdout_per_class = "0", "3x2", 2
        args.render_px = min(args.render_px, 64)
        args.candidates = args.candidates or ",".join(QUICK)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the study, append every run to ``--out``, print the side-by-side table; returns the JSON object."""
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    names = args.candidates.split(",") if args.candidates else list(CANDIDATES)
    unknown = set(names) - set(CANDIDATES)
    if unknown:
        raise SystemExit(f"unknown candidates {sorted(unknown)}; choose from {', '.join(CANDIDATES)}")
    if "probe" not in names:
        names.insert(0, "probe")  # every delta is paired with the probe on the same seed and size
    sizes = [Size.parse(s, args.holdout_per_class) for s in args.sizes.split(",")]
    narrow = {Size.parse(s, args.holdout_per_class) for s in (args.narrow_sizes or args.sizes.split(",")[0]).split(",")}
    seeds = [int(s) for s in args.seeds.split(",")]
    backbone = BackboneConfig(name=args.backbone, image_size=args.image_size, weights=args.weights)
    work = args.work_dir or (args.data_dir or Path("/tmp")) / "recipe-sets"
    embedder = build_embedder(backbone, data_dir=args.data_dir)
    depth = len(embedder.model.blocks)
    settings = {"backbone": args.backbone, "weights": args.weights, "image_size": args.image_size,
                "render_px": args.render_px, "quick": args.quick, "run_minutes": args.run_minutes}  # fmt: skip
    previous = _load(args.out)
    runs = previous.get("runs", []) if args.resume and previous.get("settings") == settings else []
    done = {(r["candidate"], r["size"], r["seed"]) for r in runs}
    result: dict[str, Any] = {}

    def save() -> None:
        nonlocal result
        result = {"benchmark": "bench_recipe", "title": "Quick recipe study: holdout top-1 over seeds, ILA vs probe",
                  "machine": machine(), "settings": settings,
                  "candidates": {n: dataclasses.asdict(c) for n, c in CANDIDATES.items()},
                  "rows": summarise(runs), "runs": runs}  # fmt: skip
        _write(args.out, result)

    for size in sizes:
        for seed in seeds:
            chosen = [n for n in names if (CANDIDATES[n].wide or size in narrow)
                      and seed in seeds[: CANDIDATES[n].seeds or len(seeds)]]
            todo = [n for n in chosen if (n, size.label(), seed) not in done]
            if not todo:
                continue
            t0 = time.perf_counter()
            data = _dataset(work, seed, size, args.render_px)
            render_s = time.perf_counter() - t0
            cuts = {depth - 1} | {placement(CANDIDATES[n].placement, depth)[0] for n in todo if CANDIDATES[n].placement}
            t0 = time.perf_counter()
            bank = _token_bank(embedder, data, cuts)
            embed_s = time.perf_counter() - t0
            _logger.info("%s seed %d: rendered in %.1f s, backbone pass %.1f s (%d train, %d holdout)", size.label(),
                         seed, render_s, embed_s, len(data.train), len(data.holdout))  # fmt: skip
            for name in todo:
                cand = CANDIDATES[name]
                quick = QUICK.get(name, {"steps": 2}) if args.quick else {}
                if cand.placement is None:
                    row, share = _probe(embedder, data, bank, seed, cand.pooled), 1.0
                else:
                    row = _ila(cand, backbone, data, bank, seed, args, depth, quick)
                    share = (placement(cand.placement, depth)[0] + 1) / depth  # the job's own prefix fill
                row = {"candidate": name, "size": size.label(), "seed": seed, "cultivars": size.cultivars,
                       "per_class": size.per_class, "holdout_per_class": size.holdout, **row,
                       "embed_s": round(embed_s, 2), "est_job_s": round(row["fit_s"] + share * embed_s, 1)}  # fmt: skip
                runs.append(row)
                _logger.info("%s %s seed %d: top-1 %.3f, %d steps, train %.1f s", name, size.label(), seed,
                             row["top1"], row["steps"], row["train_s"])  # fmt: skip
                save()
            del bank
    save()
    print(table(result["rows"]))
    return result


if __name__ == "__main__":
    main()
