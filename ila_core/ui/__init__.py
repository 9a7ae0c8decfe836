"""The web app (the only package that imports gradio): ``build_app(config)`` and its launch settings."""

from __future__ import annotations

from .auth import Users, load_users
from .build import build_app
from .launch import launch_settings, prepare_environment, queue_settings
from .options import TEST_BACKBONE, DemoSpec, StudioOptions
from .studio import Studio

__all__ = [
    "TEST_BACKBONE",
    "DemoSpec",
    "Studio",
    "StudioOptions",
    "Users",
    "build_app",
    "launch_settings",
    "load_users",
    "prepare_environment",
    "queue_settings",
]
