"""Import rate of an ImageFolder tree: durability work per image vs per batch, side by side in one run.

Writes ``--images`` small toy PNGs (48 px, ``--cultivars`` folders, a quarter of them unlabelled at the tree's
top) once, then imports the same tree into fresh data directories, interleaved round by round:

* ``per_image``: ``batch_size=1``, every image made durable on its own (file fsync, folder fsync, one commit),
  the way imports worked before batching (which also committed the label separately: one more fsync);
* ``batched``: the default batch (one fsync of each touched folder and one transaction per batch).

Prints one JSON object and writes ``bench/results/import.json``; ``images_per_cpu_s`` (this process's CPU time)
shows what is left once the machine is shared: the wall-clock rate includes waiting for other processes' CPU.

    python -m bench.bench_import                 # 2,000 images, 3 rounds
    python -m bench.bench_import --images 300 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import machine, write_result
from ila_core.data.importers import DEFAULT_IMPORT_BATCH, import_path, summarise
from ila_core.training.toydata import toy_image

_logger = logging.getLogger(__name__)


def write_tree(root: Path, images: int, cultivars: int) -> None:
    """``root/<cultivar>/*.png`` for three quarters of the images, ``root/*.png`` (unlabelled) for the rest."""
    for i in range(images):
        label = i % cultivars
        folder = root if i % 4 == 3 else root / f"cultivar-{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        toy_image(label, i).save(folder / f"leaf-{i:05d}.png")


def import_once(tree: Path, work: Path, batch_size: int) -> dict:
    """Import ``tree`` into a fresh data directory under ``work``; seconds and the summary."""
    data_dir = Path(tempfile.mkdtemp(prefix="data-", dir=work))
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        results = list(import_path(tree, data_dir, fmt="imagefolder", batch_size=batch_size))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    summary = summarise(results)
    return {"seconds": seconds, "cpu_s": cpu, "imported": summary["imported"], "labelled": summary["labelled"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--cultivars", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, default=None, help="where the trees go (default: a temp dir)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-import-", dir=args.work_dir))
    try:
        tree = work / "tree"
        write_tree(tree, args.images, args.cultivars)
        cases = {"per_image": 1, "batched": DEFAULT_IMPORT_BATCH}
        runs: dict[str, list[dict]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, batch in cases.items():
                runs[name].append(import_once(tree, work, batch))
        rows = []
        for name, batch in cases.items():
            secs, cpu = (statistics.median(r[k] for r in runs[name]) for k in ("seconds", "cpu_s"))
            rows.append({"case": name, "batch_size": batch, "images": args.images, "median_s": round(secs, 3),
                         "images_per_s": round(args.images / secs, 1), "cpu_s": round(cpu, 3),
                         "images_per_cpu_s": round(args.images / cpu, 1), "imported": runs[name][0]["imported"],
                         "labelled": runs[name][0]["labelled"]})  # fmt: skip
        out = {"title": "Import of an ImageFolder tree (48 px PNGs): durability per image vs per batch, same run",
               "rows": rows, "speedup": round(rows[1]["images_per_s"] / rows[0]["images_per_s"], 2),
               "rounds": args.rounds, "load_avg_1m": os.getloadavg()[0], "machine": machine()}  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))
    write_result("import", out)


if __name__ == "__main__":
    main()
