"""kill -9 during batched imports: every acknowledged image is stored, and no row lacks its whole file."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from ila_core.fsutil import sha256_file
from ila_core.store import LabelStore
from ila_core.training.toydata import toy_image

_IMAGES = 400

_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from ila_core.data.importers import import_path

    for result in import_path(Path(sys.argv[1]), Path(sys.argv[2]), fmt="imagefolder", batch_size=16):
        if result.status in ("imported", "duplicate"):
            print("ACK", result.image_id, result.label or "-", flush=True)
""")


def test_kill9_during_batched_import_loses_no_acknowledged_image(tmp_path: Path):
    """SIGKILL an importer 8 times mid-import: acknowledged images and labels survive, files stay whole."""
    tree = tmp_path / "tree"
    for i in range(_IMAGES):
        folder = tree / f"cultivar-{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        toy_image(i % 3, i, size=32).save(folder / f"leaf-{i:04d}.png")
    data_dir = tmp_path / "data"
    acked: dict[int, str] = {}
    cut: list[int] = []  # acknowledgements of each killed round
    rng = random.Random(14)
    for round_ in range(9):
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tree), str(data_dir)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)  # fmt: skip
        lines: list[list[str]] = []
        if round_ < 8:
            first = child.stdout.readline()  # the import is under way (re-acknowledged duplicates come first) ...
            lines.append(first.split(" "))
            time.sleep(rng.uniform(0.0, 1.0))  # ... then kill it somewhere in a later batch
            child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=120)
        assert round_ < 8 or child.returncode == 0, err
        lines += [line.split(" ") for line in out.splitlines()]
        lines = [parts for parts in lines if len(parts) == 3 and parts[0] == "ACK"]  # a line cut by the kill is not
        acked.update({int(parts[1]): parts[2].strip() for parts in lines})
        cut += [len(lines)] if round_ < 8 else []
    assert any(0 < n < _IMAGES for n in cut), cut  # kills did land in the middle of an import
    with LabelStore.open(data_dir / "ila.db") as store:
        assert store.integrity_check() == "ok"
        rows = store.images()
        labels = {r["id"]: r["label"] for r in rows}
        assert len(rows) == _IMAGES and all(labels.get(i) == label for i, label in acked.items())
        for row in rows:  # a row is committed only after its file is durable and whole
            assert sha256_file(data_dir / row["rel_path"]) == row["stored_sha256"], row["id"]
        assert store.derived_current_labels() == store.replay_current_labels()
