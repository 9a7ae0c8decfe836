"""The web app (the only package that imports gradio): ``build_app(config)`` and its launch settings."""

from __future__ import annotations

from .auth import Users, load_users
from .build import build_app
from .launch import launch_settings, prepare_environment, queue_settings
from .options import TEST_BACKBONE, DemoSpec, StudioOptions
from .studio import Studio

__all__ = [
    "build_app",
    "launch_settings",
    "queue_settings",
    "prepare_environment",
    "Studio",
    "StudioOptions",
    "DemoSpec",
    "TEST_BACKBONE",
    "Users",
    "load_users",
]
