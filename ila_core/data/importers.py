"""Import leaf images (and their labels) into a data directory from common dataset layouts.

Layouts (``fmt``; ``"auto"`` detects them, see :func:`detect_layout`):

* ``imagefolder``: ``root/<cultivar>/*.png``; optionally split first, ``root/{train,holdout,test,val}/<cultivar>/``
  (test/val become our ``holdout``; ``unassigned/`` means no split). Files directly under ``root`` (or a split
  folder) are imported unlabelled. Folder names are percent-decoded, the inverse of the exporter's escaping.
* ``csv``: our CSV list, header ``path,label[,split]`` plus the export's ``label_kind``/``tentative_label``/
  ``alt_label`` (:mod:`ila_core.data.formats.csv_list`).
* ``ufg``: the UFG benchmark releases (:mod:`ila_core.data.formats.ufg`).
* ``fiftyone``: FiftyOne's ``data/`` + ``labels.json`` classification export
  (:mod:`ila_core.data.formats.fiftyone`).
* ``coco``: ``images/`` + a COCO ``annotations.json``; the category of an image's annotations is its cultivar
  (:mod:`ila_core.data.formats.coco`).
* ``hf-imagefolder``: a Hugging Face imagefolder with ``metadata.csv``/``metadata.jsonl`` (cultivar in ``label``,
  :mod:`ila_core.data.formats.hf_imagefolder`).
* ``labelstudio``: a Label Studio JSON, JSON_MIN or CSV export, whose annotations become correction events of
  images already stored (:mod:`ila_core.data.formats.label_studio`); read from a server path only.
* a ``.zip`` of any of the folder layouts, extracted safely first (no absolute or ``..`` names, no links, entry
  count, size and compression-ratio caps); paths in a CSV inside a zip must stay inside the zip.

A tree holding a label file that the detected layout does not read is refused, naming the file (see
:mod:`ila_core.data.layouts`); every result names the layout read.

Reading server paths is an admin action. The app passes ``roots`` (its ``--import-root`` folders): the path
and every file a layout names (CSV rows included, symlinks resolved) must lie inside one of them, and
``max_files`` caps what one import may plan. Bytes that users upload never come here directly: they go
through :mod:`ila_core.data.uploads`, which accepts image files and zips of images only.

Every file goes through :func:`ila_core.images.load_image`; accepted images are re-encoded without metadata
and written content-addressed under ``<data_dir>/images/`` before the store row is added. Durability is
batched: the files of up to ``batch_size`` images are flushed together, then their rows and labels are
committed in one transaction, and only then are their results yielded (acknowledged); a crash loses at most
the unacknowledged batch, and never leaves a row without its whole file. Duplicates are recognised by the
sha256 of the file's bytes, which matches either an earlier upload or a stored copy (so re-importing our own
export adds nothing); both are index lookups. A duplicate's label is applied only when the stored image has
no label yet; an existing label is never overwritten by an import.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..images import (
    BadImage,
    ImageLimits,
    LoadedImage,
    encode_for_storage,
    load_image,
    safe_stored_name,
    storage_extension,
)
from ..fsutil import DurableFiles
from ..store import DB_NAME, LabelStore, StoreError
from ..store.validation import check_label
from .archive import ArchiveRefused, ZipLimits, extract_zip
from .formats import label_studio
from .layouts import FORMATS, PlannedFile, detect_layout, plan_layout, ufg_label
from .results import ImportResult, summarise

__all__ = ["ImportResult", "ZipLimits", "import_path", "detect_layout", "summarise", "ufg_label", "DB_NAME",
           "OutsideImportRoots", "TooManyFiles", "check_import_root", "DEFAULT_IMPORT_BATCH"]  # fmt: skip

_logger = logging.getLogger(__name__)

DEFAULT_IMPORT_BATCH = 64  # images made durable together: one flush of their files, one commit


class OutsideImportRoots(ValueError):
    """A server path outside the folders the admin named at launch (``--import-root``)."""


class TooManyFiles(ValueError):
    """An import that plans more files (or CSV rows) than the caller's cap; nothing was written."""

    def __init__(self, name: str, count: int, limit: int) -> None:
        super().__init__(f"{name} lists {count:,} files > limit {limit:,} per import; split it, "
                         "or import it with `python -m ila_core import` on the server")  # fmt: skip
        self.count, self.limit = count, limit


def check_import_root(path: Path, roots: Sequence[Path]) -> Path:
    """``path`` with symlinks resolved, if it lies inside one of ``roots``.

    Raises:
        OutsideImportRoots: no roots are configured, or the path is outside all of them (the message lists them).
    """
    resolved = Path(path).expanduser().resolve()
    allowed = [Path(r).expanduser().resolve() for r in roots]
    if not allowed:
        raise OutsideImportRoots("server-path imports are off: start the app with --import-root DIR (repeatable)")
    if not any(resolved.is_relative_to(root) for root in allowed):
        listed = ", ".join(str(r) for r in allowed)
        raise OutsideImportRoots(f"{resolved} is outside the import roots ({listed})")
    return resolved


def import_path(
    path: Path,
    data_dir: Path,
    *,
    fmt: str = "auto",
    user: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    split: str | None = None,
    limits: ImageLimits = ImageLimits(),
    zip_limits: ZipLimits = ZipLimits(),
    quick_check: bool = True,
    roots: Sequence[Path] | None = None,
    max_files: int | None = None,
    new_cultivars: bool = True,
    batch_size: int | None = None,
) -> Iterator[ImportResult]:
    """Import a folder, CSV, zip or single image into ``data_dir``, one result per file (for a Label Studio
    export: the annotations of images already stored, one result per annotation).

    A generator: consume it in one thread (it holds a store connection until exhausted or closed).

    Args:
        path: what to import.
        data_dir: the app's data directory (``ila.db`` and ``images/`` inside; created if missing).
        fmt: 'auto' or one of :data:`ila_core.data.layouts.FORMATS`.
        user: recorded as uploader and labeller.
        on_progress: called with (done, total) after each file.
        split: 'train' or 'holdout' for every new image, overriding the layout; None keeps the layout's.
        limits: image caps (bytes, pixels, output size).
        zip_limits: archive caps.
        quick_check: verify the whole database file before writing; callers that already checked it at
            start-up (the app, a loop of single-file imports) pass False to skip reading it again.
        roots: when given, ``path`` and every file its layout names must lie inside one of these folders
            (files outside are rejected); None means unconfined (the CLI, run by the machine's own user).
        max_files: refuse, before writing anything, an import that plans more files or CSV rows than this.
        new_cultivars: False leaves a label that names no existing cultivar unsaved (the image is still
            imported, and its result says why); only admins may create cultivars in the app.
        batch_size: images made durable together (default :data:`DEFAULT_IMPORT_BATCH`); their results are
            yielded after the batch's files are flushed and its transaction committed.

    Yields:
        One :class:`ImportResult` per file, in a stable order.

    Raises:
        ValueError: unknown ``fmt``/``split``, no recognisable layout, or a CSV without ``path,label``.
        OutsideImportRoots: ``roots`` are given and ``path`` is outside them.
        TooManyFiles: more than ``max_files`` planned.
        FileNotFoundError: ``path`` does not exist.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown import format {fmt!r} (expected one of {', '.join(FORMATS)})")
    if split is not None and split not in ("train", "holdout"):
        raise ValueError(f"split must be 'train', 'holdout' or None, got {split!r}")
    path, data_dir = Path(path), Path(data_dir)
    if roots is not None:
        path = check_import_root(path, roots)
    if not path.exists():
        raise FileNotFoundError(f"nothing to import at {path}")
    data_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if path.is_file() and (layout := detect_layout(path)) in label_studio.LAYOUTS:
            if fmt not in ("auto", "labelstudio"):
                raise ValueError(f"{path.name} is a Label Studio export ({layout}), not a {fmt} layout")
            store = stack.enter_context(LabelStore.open(data_dir / DB_NAME, quick_check=quick_check))
            yield from label_studio.import_annotations(path, layout, store, user=user, new_cultivars=new_cultivars,
                                                       on_progress=on_progress)  # fmt: skip
            return
        if _is_zip(path):
            cache = data_dir / "cache"
            cache.mkdir(exist_ok=True)
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="import-", dir=cache)))
            try:
                refused = extract_zip(path, root, zip_limits)
            except ArchiveRefused as exc:
                yield ImportResult(path.name, "rejected", str(exc))
                return
            layout, items = plan_layout(root, fmt, confine=True, prefix=f"{path.name}!")
        else:
            refused, (layout, items) = [], plan_layout(path, fmt, data_dir=data_dir)
        if max_files is not None and len(items) > max_files:
            raise TooManyFiles(path.name, len(items), max_files)
        if roots is not None and not _is_zip(path):  # a zip's files are confined to it by plan()
            # The store's own files count as inside: a CSV exported away from the data directory names them.
            items = [_confined(item, [*roots, data_dir / "images"]) for item in items]
        yield from (ImportResult(f"{path.name}!{name}", "rejected", why, layout="zip") for name, why in refused)
        store = stack.enter_context(LabelStore.open(data_dir / DB_NAME, quick_check=quick_check))
        ingest = _Ingester(store, data_dir, user=user, limits=limits, new_cultivars=new_cultivars)
        batch = max(1, int(batch_size or DEFAULT_IMPORT_BATCH))
        waiting: list[tuple[PlannedFile, ImportResult | _Pending]] = []
        done = 0
        for n, item in enumerate(items, start=1):
            waiting.append((item, ingest(item, split)))
            if ingest.pending < batch and len(waiting) < 4 * batch and n < len(items):
                continue  # duplicates and rejections wait too, so results keep their order
            ingest.commit()  # durable first; only then are these results acknowledged
            for planned, outcome in waiting:
                done += 1
                yield _annotated(outcome.result if isinstance(outcome, _Pending) else outcome, planned, layout)
                if on_progress is not None:
                    on_progress(done, len(items))
            waiting = []


def _annotated(result: ImportResult, item: PlannedFile, layout: str) -> ImportResult:
    """The result with the label file's line, the layout read and the label kind (kept out of the reason)."""
    asked = item.label is not None or item.kind != "label"
    kind = item.kind if asked and result.status != "rejected" else None
    return replace(result, line=item.line, layout=layout, kind=kind)


def _is_zip(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".zip"


def _confined(item: PlannedFile, roots: Sequence[Path]) -> PlannedFile:
    """The item, or a rejection when the file it names (a CSV row, a symlink) lies outside the roots."""
    if item.path is None or item.error is not None:
        return item
    try:
        check_import_root(item.path, roots)
    except OutsideImportRoots:
        return replace(item, path=None, error="outside the import roots")
    return item


# -- ingest: item -> stored image + label ---------------------------------------------------------


@dataclass
class _Pending:
    """A new image whose file is written but not yet durable, and whose row is not yet committed."""

    item: PlannedFile
    loaded: LoadedImage
    stored_sha: str
    rel_path: str
    split: str | None
    existed: bool  # the file was there before (another image row may use it): never removed on failure
    result: ImportResult | None = None  # set by _Ingester.commit


class _Ingester:
    """Turns planned items into stored images, label events and results (one store connection).

    ``ingest(item, split)`` returns a result at once for rejections and duplicates, or a :class:`_Pending` for a
    new image; :meth:`commit` makes the pending files durable, commits their rows and labels in one transaction
    and fills in their results.
    """

    def __init__(
        self, store: LabelStore, data_dir: Path, *, user: str | None, limits: ImageLimits, new_cultivars: bool = True
    ) -> None:
        self.store, self.data_dir, self.user, self.limits = store, data_dir, user, limits
        self.new_cultivars = new_cultivars
        self.files = DurableFiles()
        self._pending: list[_Pending] = []
        self._pending_shas: set[str] = set()

    @property
    def pending(self) -> int:
        """New images waiting for :meth:`commit`."""
        return len(self._pending)

    def __call__(self, item: PlannedFile, split_override: str | None) -> ImportResult | _Pending:
        if item.error is not None:
            return ImportResult(item.display, "rejected", item.error)
        label, split = item.label, split_override or item.split
        if label is not None or item.alt_label is not None:
            try:
                check_label(label)
                if item.alt_label is not None:
                    check_label(item.alt_label)
            except ValueError as exc:
                return ImportResult(item.display, "rejected", f"bad label: {exc}")
        try:
            raw = _read_capped(item.path, self.limits.max_bytes)
        except BadImage as exc:
            return ImportResult(item.display, "rejected", str(exc))
        except OSError as exc:
            return ImportResult(item.display, "rejected", f"cannot read file: {exc.strerror or exc}")
        sha = hashlib.sha256(raw).hexdigest()
        try:
            existing = self._known(sha)
            if existing is not None:
                return self._duplicate(item, existing, label)
            try:
                loaded = load_image(raw, limits=self.limits)
            except BadImage as exc:
                return ImportResult(item.display, "rejected", str(exc))
            encoded = encode_for_storage(loaded)
            stored_sha = hashlib.sha256(encoded).hexdigest()
            existing = self._known(stored_sha)
            if existing is not None:
                return self._duplicate(item, existing, label)
            if {loaded.sha256, stored_sha} & self._pending_shas:
                self.commit()  # the same image twice in one batch: store the first, then this is its duplicate
                existing = self._known(loaded.sha256) or self._known(stored_sha)
                if existing is not None:
                    return self._duplicate(item, existing, label)
            return self._write_file(item, loaded, encoded, stored_sha, split)
        except StoreError as exc:
            return ImportResult(item.display, "rejected", f"store error: {exc}")
        except OSError as exc:  # disk full, permissions: this file is not stored, the next may be
            return ImportResult(item.display, "rejected", f"could not store the image: {exc.strerror or exc}")

    def _known(self, sha: str) -> dict[str, Any] | None:
        return self.store.image_by_content(sha)

    def _write_file(self, item: PlannedFile, loaded: LoadedImage, encoded: bytes, stored_sha: str,
                    split: str | None) -> _Pending:  # fmt: skip
        rel_path = "images/" + safe_stored_name(loaded.sha256, storage_extension(loaded))
        target = self.data_dir / rel_path
        existed = target.exists()
        self.files.write(target, encoded)  # rewritten even when it exists: a crash may have left it short
        pending = _Pending(item, loaded, stored_sha, rel_path, split, existed)
        self._pending.append(pending)
        self._pending_shas |= {loaded.sha256, stored_sha}
        return pending

    def commit(self) -> None:
        """Flush the pending files, then add their rows and labels in one transaction; fill in their results."""
        batch, self._pending, self._pending_shas = self._pending, [], set()
        if not batch:
            return
        try:
            self.files.sync()
            with self.store.batch("import batch"):
                for pending in batch:
                    pending.result = self._add_row(pending)
        except (StoreError, OSError) as exc:
            why = f"store error: {exc}" if isinstance(exc, StoreError) else \
                f"could not store the image: {exc.strerror or exc}"  # fmt: skip
            for pending in batch:  # nothing of the batch was committed: no row, and no file we added
                pending.result = ImportResult(pending.item.display, "rejected", why)
                if not pending.existed:
                    (self.data_dir / pending.rel_path).unlink(missing_ok=True)

    def _add_row(self, pending: _Pending) -> ImportResult:
        item, loaded, split = pending.item, pending.loaded, pending.split
        metadata = {**item.metadata, "stored_sha256": pending.stored_sha, "notes": list(loaded.notes)}
        image_id, created = self.store.add_image(
            sha256=loaded.sha256, rel_path=pending.rel_path, width=loaded.width, height=loaded.height,
            fmt=loaded.format, original_name=item.path.name, metadata=metadata, split=split, user=self.user,
        )
        if not created:  # another writer stored the same bytes a moment ago
            return self._duplicate(item, self.store.image(image_id), item.label)
        if item.label is not None or item.kind != "label":
            try:
                self._record(image_id, loaded.sha256, item)
            except (StoreError, ValueError) as exc:
                if not self.store.db.conn.in_transaction:
                    raise  # the error ended the whole transaction (e.g. disk full): the batch is not stored
                return ImportResult(item.display, "imported", f"label not saved: {exc}", image_id, None, split)
        return ImportResult(item.display, "imported", None, image_id, item.label, split)

    def _duplicate(self, item: PlannedFile, row: dict[str, Any], label: str | None) -> ImportResult:
        image_id, kind, current = row["id"], row.get("label_kind"), row.get("label")
        reason = f"already stored as image {image_id}" + self._restore_archived(image_id, row)
        if (label is not None or item.kind != "label") and kind is None:
            try:
                self._record(image_id, row["sha256"], item)
            except (StoreError, ValueError) as exc:
                return ImportResult(item.display, "duplicate", f"{reason}; label not saved: {exc}", image_id, None,
                                    row.get("split"))  # fmt: skip
            reason += "; label applied"
        elif (label is not None or item.kind != "label") and (kind != item.kind or current != label):
            reason += f" with label {current!r} ({kind}); import label {label!r} ({item.kind}) not applied"
        return ImportResult(item.display, "duplicate", reason, image_id, label, row.get("split"))

    def _restore_archived(self, image_id: int, row: dict[str, Any]) -> str:
        """Uploading an archived image again brings it back (a restore event); words for the result's reason."""
        if not row.get("archived"):
            return ""
        state = self.store.archive_state(image_id)
        if state is None:
            return ""
        if state["deleted"]:
            return "; its file was deleted for good, so it stays archived"
        try:  # one restore per archive event, so a retried upload stores nothing new
            self.store.restore_image(image_id, client_event_id=f"reupload-restore-{image_id}-{state['event_id']}",
                                     user=self.user, note="uploaded again")  # fmt: skip
        except (StoreError, ValueError) as exc:
            return f"; not restored from the archive: {exc}"
        return "; restored from archive"

    def _record(self, image_id: int, sha: str, item: PlannedFile) -> None:
        # Deterministic event id: re-running the same import never stores the same label twice (hard labels
        # keep the key of earlier versions, so their re-imports stay no-ops).
        key = item.label if item.kind == "label" else f"{item.kind}\0{item.label or ''}\0{item.alt_label or ''}"
        label_key = hashlib.sha256(key.encode()).hexdigest()[:16]
        self.store.record_label(image_id, item.label, client_event_id=f"import:{sha}:{label_key}", user=self.user,
                                source="import", kind=item.kind, alt_label=item.alt_label,
                                allow_new_cultivar=self.new_cultivars)  # fmt: skip


def _read_capped(path: Path, cap: int) -> bytes:
    size = path.stat().st_size
    if size > cap:
        raise BadImage(f"file too large: {size / 1e6:.1f} MB > limit {cap / 1e6:g} MB")
    with path.open("rb") as fh:
        return fh.read(cap + 1)
