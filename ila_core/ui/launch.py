"""How the app is launched: secure defaults in one place, so ``app.py`` and the tests use the same settings.

Defaults (DESIGN "Security defaults", RELIABILITY fact 1, catalogue API-12): loopback bind unless a users
list is given, logins throttled per user and address, no share link, ``max_file_size``, a bounded queue,
``allowed_paths`` empty, the data folders and database blocked, analytics, monitoring and MCP off, errors
shown only as ``gr.Error`` messages, no run history left in the browser, Gradio's upload cache inside the
data directory and cleaned daily, and uploads refused with "storage full" when the disk lacks room.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gradio as gr
from starlette.middleware import Middleware

from ..config import AppConfig
from .middleware import LoginGuard, QueueGuard, UploadGuard
from .ml_backend import LabelStudioBackend
from .studio import Studio

__all__ = ["ASSETS", "DELETE_CACHE", "css", "head", "launch_settings", "middleware", "prepare_environment",
           "queue_settings", "theme"]  # fmt: skip

ASSETS = Path(__file__).resolve().parents[2] / "assets"
DELETE_CACHE = (3600, 86400)  # every hour, delete cached uploads older than a day
DEFAULT_CONCURRENCY = 2  # events per handler at once; the 2-core reference box saturates beyond this


def prepare_environment(data_dir: Path) -> Path:
    """Point Gradio's upload cache into ``<data_dir>/gradio-tmp`` and switch analytics off (before building)."""
    from .studio import GRADIO_TMP

    temp = Path(data_dir).resolve() / GRADIO_TMP
    temp.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(temp)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return temp


def _asset(name: str) -> str:
    path = ASSETS / name
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def theme() -> gr.themes.Base:
    """A calm green-on-slate theme with system fonts (nothing fetched from font CDNs)."""
    fonts = [
        "ui-sans-serif",
        "system-ui",
        "-apple-system",
        "Segoe UI",
        "Roboto",
        "Helvetica Neue",
        "Arial",
        "sans-serif",
    ]
    mono = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
    base = gr.themes.Soft(primary_hue="emerald", secondary_hue="slate", neutral_hue="slate", font=fonts,
                          font_mono=mono, radius_size="sm", text_size="md")  # fmt: skip
    # Field labels as quiet text rather than coloured chips: dense screens stay readable.
    return base.set(
        block_label_background_fill="*background_fill_primary",
        block_label_background_fill_dark="*background_fill_primary",
        block_label_text_color="*neutral_600",
        block_label_text_color_dark="*neutral_300",
        block_label_text_size="*text_sm",
        block_title_text_color="*neutral_700",
        block_title_text_color_dark="*neutral_200",
        block_title_text_size="*text_sm",
        block_label_padding="*spacing_xs *spacing_sm",
    )


def css() -> str:
    """The app's stylesheet (``assets/studio.css``)."""
    return _asset("studio.css")


def head() -> str:
    """Keyboard shortcuts (``assets/hotkeys.js``) as a document-level script."""
    script = _asset("hotkeys.js")
    return f"<script>{script}</script>" if script else ""


def queue_settings(config: AppConfig) -> dict[str, Any]:
    """Arguments of ``Blocks.queue``: bounded size, small default concurrency."""
    return {"max_size": config.queue_size, "default_concurrency_limit": DEFAULT_CONCURRENCY}


def middleware(studio: Studio) -> list[Middleware]:
    """Guards in front of Gradio's own routes (queue-full refusal, login throttle, disk check of the upload
    route) and the Label Studio ML backend under ``/ml``, which answers its own routes."""
    return [Middleware(QueueGuard), Middleware(LoginGuard, throttle=studio.logins),
            Middleware(UploadGuard, folder=studio.temp_dir), Middleware(LabelStudioBackend, studio=studio)]  # fmt: skip


def launch_settings(config: AppConfig, studio: Studio, *, quiet: bool = False) -> dict[str, Any]:
    """Arguments of ``Blocks.launch`` for this config (see the module docstring for each choice)."""
    users = studio.users
    if config.host not in ("127.0.0.1", "localhost", "::1") and users is None:
        raise ValueError(f"binding {config.host} needs --auth USERS_FILE (only loopback runs without login)")
    return {
        "server_name": config.host,
        "server_port": config.port,
        "share": False,
        "auth": users.check if users is not None else None,
        "auth_message": "ILA Studio: log in with the account your lab admin gave you." if users else None,
        "max_file_size": config.max_file_size,
        "allowed_paths": [],
        "blocked_paths": studio.blocked_paths(),
        "show_error": True,
        "enable_monitoring": False,
        "mcp_server": False,
        "strict_cors": True,
        "ssr_mode": False,
        "pwa": False,
        "run_history": False,
        "footer_links": ["api", "settings"],
        "quiet": quiet,
        "app_kwargs": {"middleware": middleware(studio)},
        "theme": theme(),
        "css": css(),
        "head": head(),
    }
