"""Data tab: import (zip upload; server folder, CSV or UFG layout for admins), exports as downloads, counts.

Every file goes through the importer (the one safe door for image bytes) and gets a line in the report.
Reading paths on the server is an admin action: it would otherwise let any logged-in user probe the
server's file system. Exports are written into Gradio's own cache folder for this one download.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from ..data.exporters import LABEL_STUDIO_PREFIX, export
from ..data.importers import import_path, summarise
from .errors import UserFacing, guarded
from .labelling import as_text
from .studio import Studio

__all__ = ["EXPORTS", "build_data_tab", "counts_table", "run_export"]

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
    with studio.store() as store:
        names = store.cultivars()
        by_split = {s: store.label_counts(split=s) for s in ("train", "holdout", "pool")}
        total = store.count_images()
        labelled = store.count_images(labelled=True)
    rows = []
    for name in names:
        t, h, p = (by_split[s].get(name, 0) for s in ("train", "holdout", "pool"))
        rows.append([name, t, h, p, t + h + p])
    unlabelled = total - labelled
    line = f"{total} images · {labelled} with a cultivar label · {unlabelled} unlabelled or unsure"
    line += f" · {len(names)} cultivars"
    return rows, line


def _report(results: list[Any]) -> tuple[list[list[Any]], str]:
    s = summarise(results)
    rows = [[r.file, r.status, r.reason or "", r.label or "", r.split or "", r.line or ""]
            for r in results[:_REPORT_ROWS]]  # fmt: skip
    text = (f"**{s['imported']} imported** ({s['labelled']} with labels), {s['duplicate']} duplicates, "
            f"{s['rejected']} rejected, of {s['total']} files.")  # fmt: skip
    if s["skipped"]:
        text += f" {s['skipped']} skipped."
    if s["layout"]:
        text += f" Layout read: {as_text(s['layout'])}."
    if len(results) > _REPORT_ROWS:
        text += f" The report shows the first {_REPORT_ROWS} files."
    return rows, text


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


def build_data_tab(studio: Studio, demo: gr.Blocks, tab: gr.Tab) -> None:
    """Lay out the Data tab inside the current ``gr.Tab`` and wire its events."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=6):
            gr.Markdown("### Import")
            upload = gr.File(label="Upload a .zip (ImageFolder, CSV or UFG layout inside) or images",
                             file_count="multiple", file_types=[".zip", "image"], height=110)  # fmt: skip
            with gr.Accordion("Import from a path on the server (admins)", open=False):
                server_path = gr.Textbox(label="Folder, CSV file or .zip on the server", placeholder="/srv/leaves/2025")
                server_btn = gr.Button("Import from server path")
            with gr.Row():
                fmt = gr.Dropdown(list(FORMATS), value="Detect automatically", label="Layout")
                split = gr.Dropdown(list(SPLIT_OVERRIDE), value="Keep the layout's split", label="Split")
            summary = gr.Markdown(elem_id="ila-import-summary")
            report = gr.Dataframe(headers=REPORT_HEADERS, value=[], label="Per-file report", interactive=False,
                                  max_height=300, wrap=True)  # fmt: skip
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

    @guarded
    def load_counts() -> list[Any]:
        rows, line = counts_table(studio)
        return [rows, line]

    def _import(paths: list[Path], layout: str, where: str, user: str) -> list[Any]:
        results = []
        for path in paths:
            results.extend(import_path(path, studio.data_dir, fmt=FORMATS.get(layout, "auto"), user=user,
                                       split=SPLIT_OVERRIDE.get(where), quick_check=False))  # fmt: skip
        rows, text = _report(results)
        return [rows, text]

    @guarded
    def on_upload(files: list[str] | None, layout: str, where: str, request: gr.Request) -> list[Any]:
        user = studio.username(request)
        if not files:
            return [gr.skip(), gr.skip(), gr.skip()]
        return [*_import([Path(f) for f in files], layout, where, user), None]

    @guarded
    def on_server(path: str, layout: str, where: str, request: gr.Request) -> list[Any]:
        user = studio.require_admin(request, "import from server paths")
        if not path or not path.strip():
            raise UserFacing("Enter a folder, CSV file or .zip on the server.")
        target = Path(path.strip()).expanduser()
        if not target.exists():
            raise UserFacing("Nothing to import at that path.")
        return _import([target], layout, where, user)

    @guarded
    def on_add(name: str, request: gr.Request) -> list[Any]:
        studio.require_admin(request, "add cultivars")
        with studio.store() as store:
            if name in store.cultivars():
                raise UserFacing(f"{as_text(name)} is already a cultivar.")
            store.add_cultivar(name)
        rows, line = counts_table(studio)
        return [rows, line + f" · added {as_text(name)}", ""]

    @guarded
    def on_export(fmt_key: str, prefix: str) -> str:
        return str(run_export(studio, fmt_key, (prefix or "").strip() or None))

    demo.load(load_counts, None, [counts, totals], api_visibility="private", queue=False)
    tab.select(load_counts, None, [counts, totals], api_visibility="private", queue=False)
    upload.upload(on_upload, [upload, fmt, split], [report, summary, upload], api_name="ui_import_upload",
                  api_visibility="private", concurrency_id="import", concurrency_limit=1).then(
        load_counts, None, [counts, totals], api_visibility="private", queue=False)  # fmt: skip
    server_btn.click(on_server, [server_path, fmt, split], [report, summary], api_name="ui_import_path",
                     api_visibility="private", concurrency_id="import", concurrency_limit=1).then(
        load_counts, None, [counts, totals], api_visibility="private", queue=False)  # fmt: skip
    add_btn.click(on_add, [new_cultivar], [counts, totals, new_cultivar], api_name="ui_add_cultivar",
                  api_visibility="private")  # fmt: skip
    export_btn.click(on_export, [export_fmt, url_prefix], [download], api_name="ui_export", api_visibility="private",
                     concurrency_id="export", concurrency_limit=1)  # fmt: skip
