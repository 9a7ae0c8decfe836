"""Interactive handlers at 1k / 10k / 30k images, and background scoring throughput with the tiny test model.

For each size a store is built directly (rows, 20 cultivars, half train / a quarter holdout / a quarter
unassigned and unlabelled, a model version that has scored every image), then each handler that reads the store
is timed (best of ``--repeats``): the Data tab's counts, every Review sort's first page and a page from the middle,
the pool walk's page at the end of the store, and the duplicate lookup an import makes per file. The scorer runs
the ``test_vit`` plain forward (random weights, 96 px) over ``--score-images`` real PNGs through
:class:`~ila_core.serving.scorer.BackgroundScorer` and reports images per second.

    python -m bench.bench_scale                       # 1,000 / 10,000 / 30,000 images
    python -m bench.bench_scale --sizes 1000 --score-images 500
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import torch

from bench.common import machine, write_result
from ila_core.serving.scorer import BackgroundScorer
from ila_core.store import QUEUE_SORTS, LabelStore
from ila_core.training.toydata import toy_image

_logger = logging.getLogger(__name__)

CULTIVARS = 20


def build_store(path: Path, n: int, seed: int = 0) -> int:
    """``n`` image rows with labels and one scored version; returns the version id (no image files)."""
    rng = random.Random(seed)
    names = [f"cultivar-{i:02d}" for i in range(CULTIVARS)]
    with LabelStore.open(path) as store:
        store.db.execute("PRAGMA synchronous = OFF")  # building the fixture only; the handlers run at FULL
        with store.batch():
            for name in names:
                store.add_cultivar(name)
            for i in range(n):
                sha = hashlib.sha256(f"bench-{i}".encode()).hexdigest()
                split = ("train", "train", "holdout", None)[i % 4]
                image_id, _ = store.add_image(sha256=sha, rel_path=f"images/{sha[:2]}/{sha}.png", width=32,
                                              height=32, fmt="PNG", split=split,
                                              metadata={"stored_sha256": hashlib.sha256(sha.encode()).hexdigest()})
                if split is not None:
                    store.record_label(image_id, names[i % CULTIVARS], client_event_id=f"b{i}", source="import")
        version = store.add_model_version(path="adapters/bench.safetensors", sha256="a" * 64, manifest={},
                                          metrics={}, parent_id=None, snapshot_event_id=0, job_id=None)  # fmt: skip
        rows, sims = [], {}
        for image_id in range(1, n + 1):
            p, k = rng.random(), rng.randrange(CULTIVARS)
            rows.append((image_id, [(names[k], 0.5 + p / 2), (names[(k + 1) % CULTIVARS], (1 - p) / 2)]))
            sims[image_id] = rng.random()
        store.add_predictions(version, rows, similarities=sims)
    return version


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` runs, seconds."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return round(best, 4)


class _Studio:
    """What the handlers need of a Studio: a store per call and the served version."""

    def __init__(self, db_path: Path, version: int) -> None:
        self.db_path = db_path
        self.models = SimpleNamespace(version_id=version)

    @contextlib.contextmanager
    def store(self) -> Iterator[LabelStore]:
        with LabelStore.open(self.db_path, quick_check=False) as store:
            yield store


def time_handlers(work: Path, n: int, repeats: int) -> dict:
    """Seconds per handler on an ``n``-image store."""
    from ila_core.ui.classify import _pool_page
    from ila_core.ui.data import counts_table
    from ila_core.ui.review import review_page

    path = work / f"scale-{n}.db"
    t0 = time.perf_counter()
    version = build_store(path, n)
    out: dict = {"images": n, "build_s": round(time.perf_counter() - t0, 1)}
    studio = _Studio(path, version)
    out["data_counts"] = best_of(lambda: counts_table(studio), repeats)
    for sort in QUEUE_SORTS:
        out[f"review_{sort}"] = best_of(lambda: review_page(studio, sort=sort, cultivar=None, split=None,
                                                            version="serving"), repeats)  # fmt: skip
        out[f"review_{sort}_mid_page"] = best_of(lambda: review_page(studio, sort=sort, cultivar=None, split=None,
                                                                     version="serving", offset=n // 8), repeats)
    out["review_margin_cultivar_filter"] = best_of(
        lambda: review_page(studio, sort="margin", cultivar="cultivar-03", split="pool", version="serving"), repeats)

    def pool_at_end() -> None:
        with studio.store() as store:
            _pool_page(store, n - 30, set())

    out["pool_page_at_end"] = best_of(pool_at_end, repeats)

    def dedupe_100() -> None:
        with studio.store() as store:
            for i in range(0, n, max(1, n // 100)):
                store.image_by_content(hashlib.sha256(f"bench-{i}".encode()).hexdigest())

    out["import_dedupe_per_file"] = round(best_of(dedupe_100, repeats) / 100, 5)
    path.unlink()
    return out


def time_scoring(work: Path, images: int, batch_size: int) -> dict:
    """Background scoring of ``images`` stored PNGs with test_vit (random weights) at 96 px, images per second."""
    import timm

    data_dir = work / "score"
    (data_dir / "images").mkdir(parents=True)
    with LabelStore.open(data_dir / "ila.db") as store, store.batch():
        for i in range(images):
            buf = io.BytesIO()
            toy_image(i % CULTIVARS, i, size=48).save(buf, format="PNG")
            sha = hashlib.sha256(buf.getvalue()).hexdigest()
            (data_dir / "images" / f"{sha}.png").write_bytes(buf.getvalue())
            store.add_image(sha256=sha, rel_path=f"images/{sha}.png", width=48, height=48, fmt="PNG")
        version = store.add_model_version(path="adapters/bench.safetensors", sha256="a" * 64, manifest={},
                                          metrics={}, parent_id=None, snapshot_event_id=0, job_id=None)  # fmt: skip
    model = timm.create_model("test_vit", pretrained=False, num_classes=CULTIVARS, img_size=96).eval()
    names = [f"cultivar-{i:02d}" for i in range(CULTIVARS)]

    def predict(batch):
        x = torch.stack([torch.from_numpy(__import__("numpy").asarray(im.resize((96, 96)), dtype="float32"))
                         .permute(2, 0, 1) / 255.0 for im in batch])  # fmt: skip
        with torch.no_grad():
            top = model(x).softmax(dim=1).topk(5, dim=1)
        return version, [[(names[int(i)], float(p)) for p, i in zip(pv, iv)] for pv, iv in zip(top.values, top.indices)]

    scorer = BackgroundScorer(data_dir / "ila.db", data_dir, predict=predict, version=lambda: version,
                              batch_size=batch_size, poll_s=0.2)  # fmt: skip
    t0 = time.perf_counter()
    scorer.start()  # its own thread, as in the app (one intra-op thread there)
    while scorer.status().scored < images:
        time.sleep(0.1)
    seconds = time.perf_counter() - t0
    scorer.stop()
    scored = scorer.status().scored
    return {"images": images, "scored": scored, "batch_size": batch_size, "seconds": round(seconds, 2),
            "images_per_s": round(scored / seconds, 1), "projected_30k_s": round(30_000 / (scored / seconds))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 30_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--score-images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        rows = [time_handlers(work, n, args.repeats) for n in args.sizes]
        for row in rows:
            print(json.dumps(row))
        scoring = time_scoring(work, args.score_images, args.batch_size) if args.score_images else None
        print(json.dumps({"scoring": scoring}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    keep = ("images", "data_counts", "review_unlabelled", "review_margin", "review_disagree", "review_unsure",
            "review_newest", "review_unlike", "review_margin_mid_page", "pool_page_at_end", "import_dedupe_per_file")
    write_result("scale", {"title": "Interactive handlers by store size (seconds, best of 3; model inference aside)",
                           "rows": [{k: r[k] for k in keep} for r in rows], "all": rows, "scoring": scoring,
                           "load_avg_1m": os.getloadavg()[0], "machine": machine()})  # fmt: skip


if __name__ == "__main__":
    main()
