"""Server-path imports (admins): confined to the import roots, capped in size, clear about CSV encodings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ila_core.data.importers import OutsideImportRoots, TooManyFiles, import_path
from ila_core.store import LabelStore

_seeds = iter(range(1, 10_000))


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(next(_seeds)).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
    return path


def _count(data_dir: Path) -> int:
    if not (data_dir / "ila.db").exists():
        return 0
    with LabelStore.open(data_dir / "ila.db") as store:
        return store.count_images()


def test_path_outside_the_roots_is_refused_with_the_root_list(tmp_path):
    """A folder outside every root is refused before it is read; the message lists the roots."""
    root, other = tmp_path / "incoming", tmp_path / "elsewhere"
    _png(other / "Amber-01" / "a.png")
    root.mkdir()
    with pytest.raises(OutsideImportRoots, match=rf"outside the import roots \({root}\)"):
        list(import_path(other, tmp_path / "data", roots=[root]))
    assert _count(tmp_path / "data") == 0


def test_no_roots_means_server_imports_are_off(tmp_path):
    """An empty root list refuses every path and says how to allow some."""
    with pytest.raises(OutsideImportRoots, match="--import-root DIR"):
        list(import_path(tmp_path, tmp_path / "data", roots=[]))


def test_csv_rows_and_symlinks_leaving_the_root_are_rejected(tmp_path):
    """Inside a root, a CSV row or a symlink naming a file outside it is rejected; the rest imports."""
    root = tmp_path / "incoming"
    secret = _png(tmp_path / "secret.png")
    _png(root / "inside.png")
    (root / "link.png").symlink_to(secret)
    (root / "list.csv").write_text(f"path,label\ninside.png,Amber-01\n{secret},Amber-01\nlink.png,Amber-01\n")
    results = {r.file: r for r in import_path(root / "list.csv", tmp_path / "data", roots=[root])}
    assert results["inside.png"].status == "imported"
    assert results[str(secret)].reason == "outside the import roots" == results["link.png"].reason
    assert _count(tmp_path / "data") == 1


def test_import_above_the_file_cap_is_refused_before_writing(tmp_path):
    """API-21: a CSV listing more rows than the cap is refused with the cap; nothing is stored."""
    root = tmp_path / "incoming"
    _png(root / "a.png")
    (root / "big.csv").write_text("path,label\n" + "a.png,Amber-01\n" * 50)
    with pytest.raises(TooManyFiles, match="big.csv lists 50 files > limit 10 per import") as err:
        list(import_path(root / "big.csv", tmp_path / "data", roots=[root], max_files=10))
    assert err.value.count == 50 and _count(tmp_path / "data") == 0


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_csv_that_is_not_utf8_names_the_problem_and_the_line(tmp_path, encoding):
    """A CSV saved in another encoding is refused with the line of the first bad byte, not a generic error."""
    root = tmp_path / "incoming"
    _png(root / "a.png")
    (root / "list.csv").write_bytes("path,label\na.png,Amber-01\na.png,Réunion\n".encode(encoding))
    with pytest.raises(ValueError, match=r"list.csv: line \d+ is not UTF-8 text.*save the CSV as UTF-8") as err:
        list(import_path(root / "list.csv", tmp_path / "data"))
    if encoding == "latin-1":
        assert "line 3 " in str(err.value)
    assert type(err.value) is ValueError  # shown to the user as it is (ila_core.ui.errors.user_message)
