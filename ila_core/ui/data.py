"""Data tab: import (image or zip upload; server folder, CSV or UFG layout for admins), exports, counts.

Uploads go through the upload door (:mod:`ila_core.ui.uploads`): images and zips of images only, checked
as a whole before anything is written. Reading paths on the server is an admin action, confined to the
import roots named at launch (``--import-root``): it would otherwise let a logged-in user read server files
into the store. Imports larger than ``StudioOptions.inline_import_files`` run in the background and a timer
shows their progress. Exports are written into Gradio's own cache folder for this one download.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from ..data.exporters import LABEL_STUDIO_PREFIX, export
from ..data.importers import ImportResult, OutsideImportRoots, TooManyFiles, import_path, summarise
from .bind import bind
from .errors import UserFacing, guarded, scrub
from .import_jobs import ImportJob
from .labelling import as_text
from .studio import Studio
from .uploads import receive_uploads

__all__ = ["EXPORTS", "FORMATS", "ServerImport", "build_data_tab", "counts_table", "import_server_path", "run_export"]

_logger = logging.getLogger(__name__)

EXPORTS = {
    "csv": ("CSV of current labels", "labels.csv"),
    "history": ("Label history (every event)", "history.csv"),
    "labelstudio": ("Label Studio JSON + label_config.xml (.zip)", "labelstudio.json"),
    "imagefolder": ("ImageFolder tree (.zip)", "imagefolder"),
}
FORMATS = {"Detect automatically": "auto", "ImageFolder": "imagefolder", "CSV (path,label[,split])": "csv",
           "UFG benchmark layout": "ufg", "FiftyOne classification (data/ + labels.json)": "fiftyone",
           "COCO (images/ + annotations.json)": "coco", "Hugging Face imagefolder (metadata.csv/jsonl)":
           "hf-imagefolder", "Label Studio export (JSON, JSON_MIN, CSV): annotations": "labelstudio"}  # fmt: skip
SPLIT_OVERRIDE = {"Keep the layout's split": None, "All to train": "train", "All to holdout": "holdout"}
REPORT_HEADERS = ["File", "Status", "Reason", "Label", "Split", "Line"]
_REPORT_ROWS = 500


def counts_table(studio: Studio) -> tuple[list[list[Any]], str]:
    """Rows ``[cultivar, train, holdout, unassigned, total]`` and a one-line total."""
    with studio.store() as store:  # one GROUP BY and one count, not a scan per split
        names = store.cultivars()
        counts = store.label_counts_by_split()
        total = store.count_images()
    rows = []
    for name in names:
        t, h, p = (counts.get((name, s), 0) for s in ("train", "holdout", None))
        rows.append([name, t, h, p, t + h + p])
    labelled = sum(counts.values())
    unlabelled = total - labelled
    line = f"{total} images · {labelled} with a cultivar label · {unlabelled} unlabelled or unsure"
    line += f" · {len(names)} cultivars"
    return rows, line


def _report(results: list[Any], created: tuple[str, ...] = ()) -> tuple[list[list[Any]], str]:
    s = summarise(results)
    rows = [[r.file, r.status, r.reason or "", r.label or "", r.split or "", r.line or ""]
            for r in results[:_REPORT_ROWS]]  # fmt: skip
    text = (f"**{s['imported']} imported** ({s['labelled']} with labels), {s['duplicate']} duplicates, "
            f"{s['rejected']} rejected, of {s['total']} files.")  # fmt: skip
    if s["skipped"]:
        text += f" {s['skipped']} skipped."
    if s["layout"]:
        text += f" Layout read: {as_text(s['layout'])}."
    if created:
        text += " New cultivars: " + ", ".join(as_text(c) for c in created) + "."
    if len(results) > _REPORT_ROWS:
        text += f" The report shows the first {_REPORT_ROWS} files."
    return rows, text


def _progress_text(job: Any) -> str:
    if not job.finished:
        return f"Importing {as_text(job.source)} in the background: {job.done} of {job.total or '?'} files done."
    text = _report(list(job.results))[1]
    if job.error:
        text += f" **Stopped early:** {scrub(job.error)}"
    return text


def run_export(studio: Studio, fmt: str, image_url_prefix: str | None = None) -> Path:
    """Write one export into a fresh folder of Gradio's cache; returns the file to download.

    ``image_url_prefix`` (Label Studio only) replaces the default Local Storage URL before each image path.
    """
    if fmt not in EXPORTS:
        raise UserFacing(f"Unknown export format {fmt!r}.")
    folder = Path(tempfile.mkdtemp(prefix="export-", dir=studio.temp_dir))
    name = EXPORTS[fmt][1]
    if fmt == "imagefolder":
        export(studio.data_dir, folder / name, fmt=fmt)
        archive = shutil.make_archive(str(folder / "ila-imagefolder"), "zip", root_dir=folder / name)
        shutil.rmtree(folder / name, ignore_errors=True)
        return Path(archive)
    if fmt == "labelstudio":  # the tasks and the label_config.xml written beside them, as one download
        prefix = image_url_prefix or LABEL_STUDIO_PREFIX
        export(studio.data_dir, folder / "ls" / name, fmt=fmt, image_url_prefix=prefix)
        archive = shutil.make_archive(str(folder / "ila-labelstudio"), "zip", root_dir=folder / "ls")
        shutil.rmtree(folder / "ls", ignore_errors=True)
        return Path(archive)
    export(studio.data_dir, folder / name, fmt=fmt)
    return folder / name


@dataclass(frozen=True)
class ServerImport:
    """A server-path import: finished inline (``results``), or started in the background (``job``)."""

    results: tuple[ImportResult, ...] = ()
    job: ImportJob | None = None
    count: int = 0  # files found, for a background import


def import_server_path(
    studio: Studio, request: gr.Request | None, path: str, *, layout: str = "auto", split: str | None = None
) -> ServerImport:
    """Import a folder, CSV, zip or Label Studio export under an import root (admins only).

    Up to ``inline_import_files`` files are imported while the caller waits; bigger imports (up to
    ``max_import_files``) run in the background (:attr:`Studio.imports`).

    Raises:
        UserFacing: not an admin, no path, an unknown layout or split, a path outside the import roots, nothing
            there, or too many files.
    """
    user = studio.require_admin(request, "import from server paths")
    path = (path or "").strip()
    if not path:
        raise UserFacing("Enter a folder, CSV file or .zip under an import root.")
    if layout not in FORMATS.values():
        raise UserFacing(f"Unknown layout {as_text(layout)}; one of {', '.join(FORMATS.values())}.")
    if split not in SPLIT_OVERRIDE.values():
        raise UserFacing(f"Unknown split {as_text(split)}; 'train', 'holdout' or none (keep the layout's).")
    options = studio.options

    def run(on_progress: Any = None, max_files: int = options.max_import_files) -> Any:
        return import_path(Path(path), studio.data_dir, fmt=layout, user=user, split=split, quick_check=False,
                           roots=options.import_roots, max_files=max_files, on_progress=on_progress)  # fmt: skip

    try:
        return ServerImport(results=tuple(run(max_files=options.inline_import_files)))
    except TooManyFiles as exc:  # big: refuse above the cap, else run it off the request slots
        count = exc.count
        if count > options.max_import_files:
            raise UserFacing(str(TooManyFiles(Path(path).name, count, options.max_import_files))) from None
    except OutsideImportRoots as exc:
        raise UserFacing(f"Refused: {exc}. Nothing was imported.", keep_paths=True) from None
    except FileNotFoundError:
        raise UserFacing("Nothing to import at that path.") from None
    return ServerImport(job=studio.imports.start(path, user, run), count=count)


@guarded
def load_counts(studio: Studio) -> list[Any]:
    """The counts table and its one-line total."""
    rows, line = counts_table(studio)
    return [rows, line]


@guarded
def on_upload(studio: Studio, files: list[str] | None, where: str, request: gr.Request) -> list[Any]:
    """Store an upload from the Data tab (with the chosen split) and report it per file."""
    studio.username(request)
    if not files:
        return [gr.skip(), gr.skip(), gr.skip()]
    report = receive_uploads(studio, files, request, split=SPLIT_OVERRIDE.get(where))
    return [*_report(list(report.results), report.cultivars_created), None]


@guarded
def on_server(studio: Studio, path: str, layout: str, where: str, request: gr.Request) -> list[Any]:
    """Import a server path (admins): inline, or started in the background with the timer on."""
    done = import_server_path(studio, request, path, layout=FORMATS.get(layout, "auto"),
                              split=SPLIT_OVERRIDE.get(where))  # fmt: skip
    if done.job is None:
        return [*_report(list(done.results)), gr.Timer(active=False)]
    return [[], f"Import of {done.job.total or done.count:,} files started in the background (job {done.job.id}).",
            gr.Timer(active=True)]  # fmt: skip


@guarded
def on_poll(studio: Studio) -> list[Any]:
    """The background import's progress; its report once it finishes."""
    job = studio.imports.current()
    if job is None:
        return [gr.skip(), gr.skip(), gr.Timer(active=False)]
    rows = _report(list(job.results))[0] if job.finished else gr.skip()
    return [rows, _progress_text(job), gr.Timer(active=not job.finished)]


@guarded
def on_add(studio: Studio, name: str, request: gr.Request) -> list[Any]:
    """Add a cultivar (admins)."""
    studio.require_admin(request, "add cultivars")
    with studio.store() as store:
        if name in store.cultivars():
            raise UserFacing(f"{as_text(name)} is already a cultivar.")
        store.add_cultivar(name)
    rows, line = counts_table(studio)
    return [rows, line + f" · added {as_text(name)}", ""]


@guarded
def on_export(studio: Studio, fmt_key: str, prefix: str) -> str:
    """Write the chosen export for download."""
    return str(run_export(studio, fmt_key, (prefix or "").strip() or None))


def build_data_tab(studio: Studio, demo: gr.Blocks, tab: gr.Tab) -> None:
    """Lay out the Data tab inside the current ``gr.Tab`` and wire its events."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=6):
            gr.Markdown("### Import")
            upload = gr.File(label="Upload images or a .zip of images (one folder per cultivar inside)",
                             file_count="multiple", file_types=[".zip", "image"], height=110,
                             elem_id="ila-data-upload")  # fmt: skip
            with gr.Accordion("Import from a path on the server (admins)", open=False):
                roots = len(studio.options.import_roots)
                gr.Markdown(f"{roots} import root(s) configured (`--import-root DIR` at launch)." if roots else
                            "Server-path imports are off: start the app with `--import-root DIR`.")  # fmt: skip
                server_path = gr.Textbox(label="Folder, CSV file or .zip under an import root",
                                         placeholder="/srv/leaves/2025")  # fmt: skip
                fmt = gr.Dropdown(list(FORMATS), value="Detect automatically", label="Layout")
                server_btn = gr.Button("Import from server path")
            split = gr.Dropdown(list(SPLIT_OVERRIDE), value="Keep the layout's split", label="Split")
            poll = gr.Timer(2.0, active=False)
            summary = gr.Markdown(elem_id="ila-import-summary")
            # Widths per column, or the browser squeezes "Reason" to a letter a line beside a long file path.
            report = gr.Dataframe(headers=REPORT_HEADERS, value=[], label="Per-file report", interactive=False,
                                  max_height=300, wrap=True, elem_id="ila-import-report",
                                  column_widths=["24%", "100px", "30%", "12%", "64px", "52px"])  # fmt: skip
        with gr.Column(scale=5):
            gr.Markdown("### Counts")
            totals = gr.Markdown(elem_id="ila-totals")
            counts = gr.Dataframe(
                headers=["Cultivar", "Train", "Holdout", "Unassigned", "Total"],
                value=[],
                label="Labelled images per cultivar and split",
                interactive=False,
                max_height=300,
            )
            with gr.Row(elem_classes=["ila-toolbar"]):
                new_cultivar = gr.Textbox(label="New cultivar name (admins)", scale=3)
                add_btn = gr.Button("Add cultivar", scale=1, min_width=120)
            gr.Markdown("### Export")
            with gr.Row(elem_classes=["ila-toolbar"]):
                export_fmt = gr.Dropdown([(v[0], k) for k, v in EXPORTS.items()], value="csv", label="Format", scale=3)
                export_btn = gr.Button("Export", variant="primary", scale=1, min_width=120)
            url_prefix = gr.Textbox(label="Label Studio image URL prefix", value=LABEL_STUDIO_PREFIX,
                                    info="Before each image path relative to the data directory (the default is "
                                    "Label Studio's Local Storage; see the README)")  # fmt: skip
            download = gr.File(label="Download", interactive=False, height=80)

    counts_out = [counts, totals]
    private = {"api_visibility": "private"}
    imports = {**private, "concurrency_id": "import", "concurrency_limit": 1}
    show_counts = bind(load_counts, studio)
    demo.load(show_counts, None, counts_out, **private, queue=False)
    tab.select(show_counts, None, counts_out, **private, queue=False)
    upload.upload(bind(on_upload, studio), [upload, split], [report, summary, upload], api_name="ui_import_upload",
                  **imports).then(show_counts, None, counts_out, **private, queue=False)  # fmt: skip
    server_btn.click(bind(on_server, studio), [server_path, fmt, split], [report, summary, poll],
                     api_name="ui_import_path", **imports).then(show_counts, None, counts_out, **private,
                                                                 queue=False)  # fmt: skip
    poll.tick(bind(on_poll, studio), None, [report, summary, poll], api_name="ui_import_poll", **private, queue=False,
              show_progress="hidden").then(show_counts, None, counts_out, **private, queue=False)  # fmt: skip
    add_btn.click(bind(on_add, studio), [new_cultivar], [counts, totals, new_cultivar], api_name="ui_add_cultivar",
                  **private)  # fmt: skip
    export_btn.click(bind(on_export, studio), [export_fmt, url_prefix], [download], api_name="ui_export", **private,
                     concurrency_id="export", concurrency_limit=1)  # fmt: skip
