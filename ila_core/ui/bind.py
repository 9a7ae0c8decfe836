"""Bind a tab's named handler to the studio, so builders wire module-level functions instead of closures.

Gradio decides which arguments to inject (``gr.Request``, ``gr.SelectData``) from a handler's signature and
type hints, so a ``functools.partial`` or a lambda would lose them. :func:`bind` returns a plain function whose
signature is the handler's minus the bound leading arguments, and whose type hints are the handler's.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

__all__ = ["bind"]


def bind(handler: Callable[..., Any], *leading: Any) -> Callable[..., Any]:
    """``handler`` with its first ``len(leading)`` positional arguments fixed (e.g. ``bind(on_upload, studio)``)."""

    @functools.wraps(handler)
    def bound(*args: Any, **kwargs: Any) -> Any:
        return handler(*leading, *args, **kwargs)

    signature = inspect.signature(handler)
    hints = typing.get_type_hints(handler)
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()]
    bound.__signature__ = signature.replace(parameters=params[len(leading) :],  # type: ignore[attr-defined]
                                           return_annotation=hints.get("return", signature.return_annotation))  # fmt: skip
    return bound
