"""The one door for bytes that users send: image files, and zips of images where the caller offers them.

Every UI upload and every API file goes through :func:`accept_uploads`. What it takes is decided by the
file's own bytes, never by its name: an image container that :mod:`ila_core.images` knows, or (when the
policy allows) a zip whose entries are then read as images, with labels only from the folders inside the
zip. A CSV, a folder, a symlink, a path outside the upload cache or any other kind of file is refused, and
nothing inside a file is ever read as a path on the server (that is what admin imports from an import
root are for, :func:`ila_core.data.importers.import_path` with ``roots``).

The whole request is checked before anything is written: a refusal (:class:`UploadRefused`) stores no
image, label or cultivar. Once the checks pass, each image is stored or rejected on its own, and the
:class:`UploadReport` says exactly what was written.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..images import BadImage, ImageLimits, sniff_container
from ..store import DB_NAME, LabelStore
from .archive import ZipLimits
from .importers import ImportResult, import_path

__all__ = ["CheckedUpload", "StorageFull", "UploadPolicy", "UploadRefused", "UploadReport", "accept_uploads",
           "check_free_space", "check_uploads", "store_uploads"]  # fmt: skip

_logger = logging.getLogger(__name__)

_HEAD_BYTES = 32
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with entries, an empty zip
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_FULL = "storage full, image not saved"


class UploadRefused(ValueError):
    """The request as a whole is refused; nothing was written. ``str(error)`` is meant for the user."""


class StorageFull(UploadRefused):
    """Not enough free disk space to take the upload; nothing was written."""


@dataclass(frozen=True)
class UploadPolicy:
    """What one kind of upload may contain."""

    allow_zip: bool = True  # zips of images (the Classify and Data tabs); /predict takes one image only
    max_files: int = 200  # files in one request (IMG-26); bigger sets go in one zip
    max_images: int = 20_000  # images inside the zips of one request
    new_cultivars: bool = False  # folder names inside a zip may create cultivars (admins only)
    reserve_bytes: int = 64_000_000  # free disk space that must remain after the upload is stored

    def __post_init__(self) -> None:
        for name in ("max_files", "max_images", "reserve_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class UploadReport:
    """What an accepted upload wrote: one result per image, and the cultivars it created."""

    results: tuple[ImportResult, ...]
    cultivars_created: tuple[str, ...] = field(default=())

    @property
    def stored(self) -> list[ImportResult]:
        """Images written to the store by this upload."""
        return [r for r in self.results if r.status == "imported"]

    @property
    def image_ids(self) -> list[int]:
        """Ids of the images this upload names (new and already stored), in order, once each."""
        return list(dict.fromkeys(r.image_id for r in self.results if r.image_id is not None))

    @property
    def labels_recorded(self) -> int:
        """Label events this upload wrote."""
        new = sum(1 for r in self.stored if r.label is not None)
        applied = sum(1 for r in self.results if r.status == "duplicate" and (r.reason or "").endswith("label applied"))
        return new + applied

    def describe(self) -> str:
        """One sentence of what was written, e.g. "Stored 3 new images (2 with labels); 1 rejected"."""
        counts = {s: sum(1 for r in self.results if r.status == s) for s in ("imported", "duplicate", "rejected")}
        restored = sum(1 for r in self.results if r.status == "duplicate" and "restored from archive" in (r.reason or ""))
        if not counts["imported"] and not self.labels_recorded:
            head = "Nothing new was stored"
        else:
            head = f"Stored {counts['imported']} new image(s) and {self.labels_recorded} label(s)"
        parts = [head]
        if restored:
            parts.append(f"restored from archive: {restored}")
        if counts["duplicate"]:
            parts.append(f"{counts['duplicate']} already in the store")
        if counts["rejected"]:
            parts.append(f"{counts['rejected']} rejected")
        if self.cultivars_created:
            parts.append("new cultivars: " + ", ".join(self.cultivars_created))
        return "; ".join(parts) + "."


def check_free_space(folder: Path, needed: int, reserve: int) -> None:
    """Refuse when storing ``needed`` bytes under ``folder`` would leave less than ``reserve`` free.

    Raises:
        StorageFull: with the message corrections get when the disk is full.
    """
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # unknown: let the write itself fail and be reported
    if free < needed + reserve:
        raise StorageFull(
            f"storage full, upload not saved: the server has {free / 1e6:.0f} MB free and needs "
            f"{(needed + reserve) / 1e6:.0f} MB. Free some space or ask the admin. Nothing was stored."
        )


@dataclass(frozen=True)
class CheckedUpload:
    """Files of one request that passed every check: (path, 'image' or 'zip', bytes they may take on disk)."""

    files: tuple[tuple[Path, str, int], ...]

    @property
    def needed_bytes(self) -> int:
        """Disk space the upload may take once stored."""
        return sum(size for _, _, size in self.files)


def check_uploads(
    files: Sequence[str | Path],
    *,
    upload_root: Path,
    policy: UploadPolicy = UploadPolicy(),
    limits: ImageLimits = ImageLimits(),
) -> CheckedUpload:
    """Check every file of one request (nothing is written).

    Args:
        files: paths that the web framework wrote for this request (its upload cache).
        upload_root: the upload cache; a path outside it (or a symlink, or a folder) is refused.
        policy: what this upload may contain.
        limits: image caps.

    Raises:
        UploadRefused: no files, too many, a file that is not an image (nor an allowed zip), or one that is
            not a regular file in the upload cache.
    """
    if not files:
        raise UploadRefused("No file received. Send image files" + (" or a .zip of images." if policy.allow_zip
                                                                    else "."))  # fmt: skip
    if len(files) > policy.max_files:
        raise UploadRefused(
            f"Too many files in one upload: {len(files)} > {policy.max_files}. "
            + ("Upload them as one .zip, or ask an admin to import the folder. " if policy.allow_zip else "")
            + "Nothing was stored."
        )
    root = Path(upload_root).resolve()
    return CheckedUpload(tuple(_check_one(Path(f), root, policy, limits) for f in files))


def store_uploads(
    checked: CheckedUpload,
    data_dir: Path,
    *,
    user: str | None,
    policy: UploadPolicy = UploadPolicy(),
    limits: ImageLimits = ImageLimits(),
    zip_limits: ZipLimits = ZipLimits(),
    split: str | None = None,
) -> UploadReport:
    """Store the images of a checked upload, one result per image (``split`` for every new image, if given).

    Raises:
        StorageFull: the disk lacks room for the upload; nothing was written.
    """
    data_dir = Path(data_dir)
    check_free_space(data_dir, checked.needed_bytes, policy.reserve_bytes)
    with LabelStore.open(data_dir / DB_NAME, quick_check=False) as store:
        before = set(store.cultivars())
    results: list[ImportResult] = []
    # "import-" so that the start-up sweep removes what a killed upload left here
    with tempfile.TemporaryDirectory(prefix="import-upload-", dir=_staging_dir(data_dir)) as staging:
        for n, (path, kind, _) in enumerate(checked.files):
            try:
                staged = _stage(path, kind, Path(staging) / f"{n:04d}")
                results.extend(
                    import_path(staged, data_dir, fmt="imagefolder" if kind == "zip" else "auto", user=user,
                                limits=limits, zip_limits=zip_limits, quick_check=False,
                                max_files=policy.max_images, new_cultivars=policy.new_cultivars,
                                split=split)  # fmt: skip
                )
            except ValueError as exc:  # a zip over the image cap: refused before it wrote anything
                results.append(ImportResult(path.name, "rejected", str(exc)))
            except OSError as exc:
                if exc.errno not in _NO_SPACE:
                    raise
                # the disk filled up mid-way: what is stored stays stored, the rest is reported as not saved
                results += [ImportResult(p.name, "rejected", _FULL) for p, _, _ in checked.files[n:]]
                break
    with LabelStore.open(data_dir / DB_NAME, quick_check=False) as store:
        created = tuple(sorted(set(store.cultivars()) - before))
    report = UploadReport(tuple(_storage_reason(r) for r in results), created)
    _logger.info("upload by %s: %s", user, report.describe())
    return report


def accept_uploads(
    files: Sequence[str | Path],
    data_dir: Path,
    *,
    upload_root: Path,
    user: str | None,
    policy: UploadPolicy = UploadPolicy(),
    limits: ImageLimits = ImageLimits(),
    zip_limits: ZipLimits = ZipLimits(),
) -> UploadReport:
    """:func:`check_uploads` then :func:`store_uploads`: a refusal writes nothing, an accepted upload is reported.

    Raises:
        UploadRefused: see :func:`check_uploads`; StorageFull: see :func:`store_uploads`.
    """
    checked = check_uploads(files, upload_root=upload_root, policy=policy, limits=limits)
    return store_uploads(checked, data_dir, user=user, policy=policy, limits=limits, zip_limits=zip_limits)


def _check_one(path: Path, root: Path, policy: UploadPolicy, limits: ImageLimits) -> tuple[Path, str, int]:
    """(path, 'image' or 'zip', bytes it may take on disk) for an acceptable upload, else UploadRefused."""
    name = path.name or "upload"
    refused = (
        f"{name}: refused. Only image files{' and .zip archives of images' if policy.allow_zip else ''} that you "
        "upload are accepted. Nothing was stored."
    )
    try:
        info = os.lstat(path)
    except OSError:
        raise UploadRefused(refused) from None
    # Same answer for a folder, a link, a missing file and a path outside the cache: no oracle for server paths.
    inside = path.is_absolute() and Path(os.path.realpath(path)).is_relative_to(root)
    if not inside or not stat.S_ISREG(info.st_mode):
        _logger.warning("upload refused: %s is not a regular file in the upload cache", path)
        raise UploadRefused(refused)
    with path.open("rb") as fh:
        head = fh.read(_HEAD_BYTES)
    if head.startswith(_ZIP_MAGIC):
        if not policy.allow_zip:
            raise UploadRefused(f"{name}: zip archives are not accepted here; send one image file. Nothing was stored.")
        return path, "zip", _zip_size(path, info.st_size)
    try:
        sniff_container(head)
    except BadImage as exc:
        what = "zip archives of images" if policy.allow_zip else "one image file"
        raise UploadRefused(f"{name}: {exc}. Send image files or {what}; nothing was stored.") from None
    if info.st_size > limits.max_bytes:
        raise UploadRefused(
            f"{name}: file too large: {info.st_size / 1e6:.1f} MB > limit {limits.max_bytes / 1e6:g} MB. "
            "Nothing was stored."
        )
    return path, "image", info.st_size


def _zip_size(path: Path, fallback: int) -> int:
    """Declared uncompressed size (what extraction may write); the extractor enforces it."""
    with contextlib.suppress(zipfile.BadZipFile, OSError), zipfile.ZipFile(path) as zf:
        return sum(i.file_size for i in zf.infolist()) + fallback
    return fallback


def _staging_dir(data_dir: Path) -> Path:
    folder = data_dir / "cache"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _stage(path: Path, kind: str, folder: Path) -> Path:
    """A private link (or copy) of the upload, named so the importer reads it as what its bytes are.

    The importer picks zip vs image by the suffix; the bytes decided above, so the name is made to agree
    (``leaf.csv`` holding PNG bytes stays an image; ``photos.png`` holding a zip stays a zip).
    """
    folder.mkdir()
    name = path.name or "upload"
    suffix = Path(name).suffix.lower()
    if kind == "zip" and suffix != ".zip":
        name += ".zip"
    elif kind == "image" and suffix in (".zip", ".csv", ""):
        name += ".img"
    target = folder / name
    try:
        os.link(path, target)
    except OSError:
        shutil.copyfile(path, target)
    return target


def _storage_reason(result: ImportResult) -> ImportResult:
    """Say "storage full" where an image could not be written for lack of space (disk or database)."""
    reason = result.reason or ""
    full = "storage full" in reason or any(os.strerror(code) in reason for code in _NO_SPACE)
    if result.status == "rejected" and full:
        return ImportResult(result.file, "rejected", _FULL)
    return result
