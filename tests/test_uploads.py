"""The upload door (``ila_core.data.uploads``): only image files and zips of images get in (API-16..18, IMG-26).

A refused request writes nothing (no image, label or cultivar); an accepted one says exactly what it wrote.
"""

from __future__ import annotations

import errno
import io
import os
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ila_core.data.uploads import StorageFull, UploadPolicy, UploadRefused, accept_uploads
from ila_core.store import LabelStore

_seeds = iter(range(1, 10_000))


def _png_bytes() -> bytes:
    rng = np.random.default_rng(next(_seeds))
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def dirs(tmp_path) -> tuple[Path, Path]:
    """(data dir, upload cache) with an empty store, the cache inside the data dir as in the app."""
    data_dir = tmp_path / "data"
    cache = data_dir / "gradio-tmp"
    cache.mkdir(parents=True)
    LabelStore.open(data_dir / "ila.db").close()
    return data_dir, cache


def _upload(cache: Path, name: str, data: bytes) -> Path:
    """A file as Gradio's upload route writes it: ``<cache>/<hash folder>/<original name>``."""
    folder = cache / f"h{next(_seeds):06d}"
    folder.mkdir()
    (folder / name).write_bytes(data)
    return folder / name


def _written(data_dir: Path) -> tuple[int, int, list[str]]:
    with LabelStore.open(data_dir / "ila.db") as store:
        return store.count_images(), store.last_event_id(), store.cultivars()


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


NOTHING = (0, 0, [])


def test_images_are_stored_and_reported(dirs):
    """Two image files: both stored, the report counts them."""
    data_dir, cache = dirs
    files = [_upload(cache, "a.png", _png_bytes()), _upload(cache, "b.png", _png_bytes())]
    report = accept_uploads(files, data_dir, upload_root=cache, user="bob")
    assert [r.status for r in report.results] == ["imported", "imported"] and len(report.image_ids) == 2
    assert report.describe() == "Stored 2 new image(s) and 0 label(s)."


@pytest.mark.parametrize("exists", [True, False], ids=["existing", "missing"])
def test_csv_of_server_paths_is_refused_the_same_whether_the_path_exists(dirs, tmp_path, exists):
    """A ``path,label`` CSV naming a server image is "not an image"; the answer does not depend on the path."""
    data_dir, cache = dirs
    secret = tmp_path / "secret.png"
    if exists:
        secret.write_bytes(_png_bytes())
    csv = _upload(cache, "list.csv", f"path,label\n{secret},Amber-01\n".encode())
    with pytest.raises(UploadRefused) as err:
        accept_uploads([csv], data_dir, upload_root=cache, user="bob")
    assert str(err.value) == (
        "list.csv: not an image. Send image files or zip archives of images; nothing was stored."
    )
    assert _written(data_dir) == NOTHING


def test_one_bad_file_refuses_the_whole_request(dirs):
    """An image next to a text file: nothing is stored, the message names the bad file."""
    data_dir, cache = dirs
    files = [_upload(cache, "ok.png", _png_bytes()), _upload(cache, "notes.txt", b"hello")]
    with pytest.raises(UploadRefused, match="notes.txt: not an image"):
        accept_uploads(files, data_dir, upload_root=cache, user="bob")
    assert _written(data_dir) == NOTHING


@pytest.mark.parametrize("what", ["folder", "outside", "symlink", "missing", "relative"])
def test_anything_but_a_regular_file_in_the_cache_is_refused_alike(dirs, tmp_path, what):
    """Folders (other users' uploads), paths outside the cache, links and missing files get one generic refusal."""
    data_dir, cache = dirs
    for _ in range(3):
        _upload(cache, "someone-elses.png", _png_bytes())
    outside = tmp_path / "outside.png"
    outside.write_bytes(_png_bytes())
    link = cache / "link.png"
    link.symlink_to(outside)
    path = {"folder": cache, "outside": outside, "symlink": link, "missing": cache / "nope.png",
            "relative": Path("gradio-tmp/x.png")}[what]  # fmt: skip
    with pytest.raises(UploadRefused) as err:
        accept_uploads([path], data_dir, upload_root=cache, user="bob")
    assert "Only image files and .zip archives of images that you upload are accepted" in str(err.value)
    assert str(tmp_path) not in str(err.value) and _written(data_dir) == NOTHING


def test_zip_is_refused_where_only_an_image_is_accepted(dirs):
    """/predict's policy: a zip of images is refused before any entry is read."""
    data_dir, cache = dirs
    archive = _upload(cache, "leaves.zip", _zip({"Amber-01/a.png": _png_bytes(), "Birch/b.png": _png_bytes()}))
    with pytest.raises(UploadRefused, match="zip archives are not accepted here"):
        accept_uploads([archive], data_dir, upload_root=cache, user="bob", policy=UploadPolicy(allow_zip=False))
    assert _written(data_dir) == NOTHING


def test_zip_of_images_by_a_user_creates_no_cultivars(dirs):
    """Folder names in a user's zip do not become cultivars: images stored unlabelled, each result says why."""
    data_dir, cache = dirs
    archive = _upload(cache, "leaves.zip", _zip({"Amber-01/a.png": _png_bytes(), "Birch/b.png": _png_bytes()}))
    report = accept_uploads([archive], data_dir, upload_root=cache, user="bob")
    assert [r.status for r in report.results] == ["imported", "imported"] and report.cultivars_created == ()
    assert all("label not saved: unknown cultivar" in r.reason for r in report.results)
    assert _written(data_dir) == (2, 0, [])


def test_zip_of_images_by_an_admin_reports_new_cultivars(dirs):
    """An admin's zip may create cultivars; the report names them and counts the labels written."""
    data_dir, cache = dirs
    archive = _upload(cache, "leaves.zip", _zip({"Amber-01/a.png": _png_bytes(), "Birch/b.png": _png_bytes()}))
    report = accept_uploads([archive], data_dir, upload_root=cache, user="ada", policy=UploadPolicy(new_cultivars=True))
    assert report.cultivars_created == ("Amber-01", "Birch") and report.labels_recorded == 2
    assert report.describe() == "Stored 2 new image(s) and 2 label(s); new cultivars: Amber-01, Birch."


def test_csv_inside_a_zip_is_never_read_as_paths(dirs, tmp_path):
    """A CSV in a zip is just a file that is not an image; the server file it names is not imported."""
    data_dir, cache = dirs
    secret = tmp_path / "secret.png"
    secret.write_bytes(_png_bytes())
    archive = _upload(cache, "list.zip", _zip({"labels.csv": f"path,label\n{secret},Amber-01\n".encode(),
                                               "leaf.png": _png_bytes()}))  # fmt: skip
    report = accept_uploads([archive], data_dir, upload_root=cache, user="ada", policy=UploadPolicy(new_cultivars=True))
    statuses = {r.file: (r.status, r.reason) for r in report.results}
    assert statuses["list.zip!labels.csv"] == ("rejected", "not an image") and _written(data_dir)[0] == 1
    assert report.cultivars_created == ()


def test_the_bytes_decide_not_the_name(dirs):
    """PNG bytes named ``.csv`` are stored as an image; zip bytes named ``.png`` are read as a zip."""
    data_dir, cache = dirs
    image = _upload(cache, "leaf.csv", _png_bytes())
    archive = _upload(cache, "photo.png", _zip({"x.png": _png_bytes()}))
    report = accept_uploads([image, archive], data_dir, upload_root=cache, user="bob")
    assert [r.status for r in report.results] == ["imported", "imported"]


def test_too_many_files_are_refused_with_the_way_out(dirs):
    """IMG-26: more files than the policy allows are refused before any is read."""
    data_dir, cache = dirs
    with pytest.raises(UploadRefused, match=r"Too many files in one upload: 500 > 200.*\.zip.*Nothing was stored"):
        accept_uploads([cache / f"{i}.png" for i in range(500)], data_dir, upload_root=cache, user="bob")


def test_full_disk_is_refused_before_anything_is_written(dirs, monkeypatch):
    """API-20: too little free space gives the "storage full" message corrections get; nothing stored."""
    data_dir, cache = dirs
    leaf = _upload(cache, "a.png", _png_bytes())
    monkeypatch.setattr("ila_core.data.uploads.shutil.disk_usage", lambda _: SimpleNamespace(free=1000))
    with pytest.raises(StorageFull, match="storage full, upload not saved"):
        accept_uploads([leaf], data_dir, upload_root=cache, user="bob")
    assert _written(data_dir) == NOTHING


def test_disk_filling_up_mid_upload_is_reported_per_file(dirs, monkeypatch):
    """FLT-07: ENOSPC while storing the second image: the first stays stored, the report says which failed."""
    data_dir, cache = dirs
    files = [_upload(cache, "a.png", _png_bytes()), _upload(cache, "b.png", _png_bytes())]
    import ila_core.data.importers as importers

    real, calls = importers.DurableFiles.write, []

    def flaky(self, path, data, **kwargs):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self, path, data, **kwargs)

    monkeypatch.setattr(importers.DurableFiles, "write", flaky)
    report = accept_uploads(files, data_dir, upload_root=cache, user="bob")
    assert [(r.status, r.reason) for r in report.results] == [("imported", None),
                                                              ("rejected", "storage full, image not saved")]
    assert report.describe() == "Stored 1 new image(s) and 0 label(s); 1 rejected." and _written(data_dir)[0] == 1
