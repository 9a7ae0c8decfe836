"""Stored images for display: open by store row, thumbnails, captions.

The image folder is never served over HTTP (it is in ``blocked_paths``); handlers return PIL images, which
Gradio re-encodes into its own cache, so only what a page shows leaves the server.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from PIL import Image

__all__ = ["ThumbnailCache", "open_stored", "thumbnail"]

_logger = logging.getLogger(__name__)

THUMB_SIDE = 256


def open_stored(data_dir: Path, row: dict[str, Any]) -> Image.Image:
    """The stored (already validated) image of a store row, as RGB.

    Raises:
        FileNotFoundError: the file is missing from the data directory.
    """
    from ..training.dataset import image_path

    path = image_path(Path(data_dir), row["rel_path"])
    with Image.open(path) as im:
        return im.convert("RGB")


def thumbnail(image: Image.Image, side: int = THUMB_SIDE) -> Image.Image:
    """A copy no larger than ``side`` on its longest edge."""
    thumb = image.copy()
    thumb.thumbnail((side, side), Image.Resampling.LANCZOS)
    return thumb


class ThumbnailCache:
    """Thumbnails by image sha256 (bounded LRU, thread-safe); a missing file gives a grey tile."""

    def __init__(self, data_dir: Path, *, capacity: int = 2000) -> None:
        self.data_dir, self.capacity = Path(data_dir), capacity
        self._items: OrderedDict[str, Image.Image] = OrderedDict()
        self._lock = threading.Lock()

    def forget(self, sha256: str) -> None:
        """Drop one thumbnail (its file was deleted)."""
        with self._lock:
            self._items.pop(sha256, None)

    def get(self, row: dict[str, Any]) -> Image.Image:
        """Thumbnail of a store row (``sha256`` and ``rel_path`` keys)."""
        key = row["sha256"]
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        try:
            thumb = thumbnail(open_stored(self.data_dir, row))
        except OSError:
            _logger.warning("stored image %s is missing or unreadable", row.get("id"))
            return Image.new("RGB", (THUMB_SIDE, THUMB_SIDE), (200, 200, 200))
        with self._lock:
            self._items[key] = thumb
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return thumb
