"""``build_app(config) -> gr.Blocks``: the page, one tab per module, the API, and the header status line.

Nothing is built at import time. The :class:`Studio` (store path, serving runtime, worker) is passed in or
opened here; the Blocks only closes over it. Launch it with :func:`ila_core.ui.launch.launch_settings`.
"""

from __future__ import annotations

import atexit
import logging

import gradio as gr

from ..config import AppConfig
from .api import register_api
from .blocks import StudioBlocks
from .classify import build_classify_tab
from .data import build_data_tab
from .errors import guarded
from .header import header_html
from .history import new_history
from .launch import DELETE_CACHE, prepare_environment
from .models import build_models_tab
from .options import StudioOptions
from .review import build_review_tab
from .studio import Studio
from .train import build_train_tab

__all__ = ["build_app"]

_logger = logging.getLogger(__name__)

_KEYS = (
    '<div class="ila-keys">Keys on this tab: <kbd>1</kbd>–<kbd>5</kbd> pick a candidate · <kbd>Enter</kbd> confirm '
    "top-1 · <kbd>U</kbd> unsure · <kbd>Z</kbd> undo your last action · <kbd>Y</kbd> redo · <kbd>←</kbd> "
    "<kbd>→</kbd> previous / next image</div>"
)


def build_app(config: AppConfig, *, studio: Studio | None = None, options: StudioOptions | None = None) -> gr.Blocks:
    """Build the ILA Studio page.

    Args:
        config: server settings and the data directory.
        studio: the running studio; opened from ``config`` and ``options`` when None (closed at exit).
        options: model/worker/demo settings when ``studio`` is None.

    Returns:
        The Blocks, not launched (``queue(**queue_settings(config))`` then ``launch(**launch_settings(...))``).
    """
    prepare_environment(config.data_dir)
    if studio is None:
        from .auth import load_users

        studio = Studio.open(config, options, users=load_users(config.auth_file))
        atexit.register(studio.close)
    with StudioBlocks(title="ILA Studio", delete_cache=DELETE_CACHE, analytics_enabled=False) as demo:
        header = gr.HTML(header_html(studio), elem_id="ila-header-bar")
        # One page-level timer for the header: a Timer inside a tab ticks only while that tab is mounted, so the
        # header went stale on every tab but Train. This one reads a few rows per tick (see header_html).
        header_timer = gr.Timer(studio.options.poll_seconds)
        history = gr.State(new_history())  # this tab's undo/redo stacks, shared by Classify and Review
        with gr.Tabs(elem_id="ila-tabs"):
            with gr.Tab("Classify", id="classify", elem_id="ila-tab-classify"):
                gr.HTML(_KEYS)
                build_classify_tab(studio, history)
            with gr.Tab("Review", id="review", elem_id="ila-tab-review") as review_tab:
                build_review_tab(studio, demo, review_tab, history)
            with gr.Tab("Train", id="train", elem_id="ila-tab-train"):
                build_train_tab(studio, demo)
            with gr.Tab("Models", id="models", elem_id="ila-tab-models") as models_tab:
                build_models_tab(studio, demo, models_tab)
            with gr.Tab("Data", id="data", elem_id="ila-tab-data") as data_tab:
                build_data_tab(studio, demo, data_tab)
        register_api(studio)

        @guarded
        def status(request: gr.Request) -> str:
            studio.follow_model()  # follow promotions made by another process (CLI, standalone worker)
            studio.sweep_lost_jobs()  # and notice when that worker died mid-job
            user = getattr(request, "username", None) if studio.users is not None else None
            return header_html(studio, user, studio.is_admin(request))

        demo.load(status, None, [header], api_visibility="private", queue=False)
        header_timer.tick(status, None, [header], api_name="ui_header", api_visibility="private", queue=False,
                          show_progress="hidden")  # fmt: skip
    return demo
