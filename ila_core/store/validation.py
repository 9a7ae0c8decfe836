"""Argument checks for the label store: refuse bad input with a ValueError naming the problem.

Labels and notes are stored verbatim when they pass (a label that starts with ``=`` or contains HTML
is a legal cultivar name; exporters and the UI neutralise it on the way out). What we refuse rather
than silently change: empty text, over-long text, control and bidi-override characters, surrounding
whitespace (it would create look-alike cultivars).
"""

from __future__ import annotations

import html
import json
import math
import numbers
import re
import unicodedata
from typing import Any

__all__ = [
    "MAX_LABEL_CHARS",
    "MAX_NOTE_CHARS",
    "SPLITS",
    "SOURCES",
    "check_label",
    "check_text",
    "check_split",
    "check_sha256",
    "check_rel_path",
    "clean_original_name",
    "dump_json",
    "json_safe",
]

MAX_LABEL_CHARS = 200
MAX_NOTE_CHARS = 2000
MAX_USER_CHARS = 200
MAX_JSON_CHARS = 64_000
SPLITS = ("train", "holdout")  # NULL in the table = the unlabelled pool
SOURCES = ("expert", "import", "model-accepted", "bulk")

_SHA256 = re.compile(r"[0-9a-f]{64}")
# Bidi embedding/override/isolate controls: they make a label display as something else.
_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


def _bad_char(text: str, allow_newlines: bool) -> str | None:
    for ch in text:
        if allow_newlines and ch in "\n\t":
            continue
        if ch in _BIDI or unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp"):
            return ch
    return None


def check_text(value: Any, what: str, *, max_chars: int, allow_newlines: bool = False) -> str:
    """Return ``value`` unchanged if it is a clean, non-empty string of at most ``max_chars``.

    Raises:
        ValueError: naming ``what`` and the problem.
    """
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{what} is empty")
    if len(value) > max_chars:
        raise ValueError(f"{what} is {len(value)} characters long (at most {max_chars})")
    bad = _bad_char(value, allow_newlines)
    if bad is not None:
        raise ValueError(f"{what} contains the control character U+{ord(bad):04X}")
    if value != value.strip():
        raise ValueError(f"{what} has leading or trailing whitespace")
    return value


def check_label(value: Any) -> str:
    """Validate a cultivar name (see module docstring for what is refused)."""
    return check_text(value, "label", max_chars=MAX_LABEL_CHARS)


def check_optional(value: Any, what: str, max_chars: int, *, allow_newlines: bool = False) -> str | None:
    """Like :func:`check_text` but ``None`` passes through."""
    if value is None:
        return None
    return check_text(value, what, max_chars=max_chars, allow_newlines=allow_newlines)


def check_user(value: Any) -> str | None:
    """Validate an optional user name."""
    return check_optional(value, "user", MAX_USER_CHARS)


def check_split(value: Any, *, allow_pool: bool = True) -> str | None:
    """Validate a split name; ``None`` (or ``"pool"``) means the unlabelled pool."""
    if value is None or (allow_pool and value == "pool"):
        return None
    if value not in SPLITS:
        raise ValueError(f"unknown split {value!r} (expected one of {', '.join(SPLITS)} or None)")
    return value


def check_sha256(value: Any) -> str:
    """Validate a lowercase hex sha256 digest."""
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise ValueError(f"sha256 must be 64 lowercase hex characters, got {value!r:.80}")
    return value


def check_rel_path(value: Any) -> str:
    """Validate a stored-file path relative to the data directory (no absolute paths, no ``..``)."""
    text = check_text(value, "rel_path", max_chars=1000)
    parts = text.replace("\\", "/").split("/")
    if text.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", text) or ".." in parts:
        raise ValueError(f"rel_path must be relative to the data directory without '..', got {text!r}")
    return text


def clean_original_name(value: str | None) -> str | None:
    """The uploader's file name as display-only metadata: basename, no control chars, HTML-escaped.

    It is never used as a path (stored files are named by content hash), so changing it here is safe.
    """
    if value is None:
        return None
    base = str(value).replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if _bad_char(ch, allow_newlines=False) is None)[:255]
    return html.escape(base, quote=True) or None


def json_safe(value: Any) -> Any:
    """Plain JSON values: numpy-style scalars become int/float, non-finite floats their names ("nan")."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dump_json(value: Any, what: str) -> str:
    """Serialise a JSON column, refusing values that are not JSON or too large."""
    if value is None:
        value = {}
    try:
        text = json.dumps(json_safe(value), ensure_ascii=False, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-serialisable: {exc}") from exc
    if len(text) > MAX_JSON_CHARS:
        raise ValueError(f"{what} is {len(text)} characters of JSON (at most {MAX_JSON_CHARS})")
    return text
