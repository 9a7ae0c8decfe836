"""A session's undo and redo stacks: this user's own actions in this browser tab, newest last.

Every action that stores events (a label, unsure, a bulk relabel, archiving) pushes one entry naming the
events it stored. Undo takes back the newest entry wherever it happened, not the image on screen, by
appending undo (or restore) events to the append-only logs; it leaves an image alone when someone else
changed it since. Redo stores the undone action again as new events. The stacks are plain dicts in
``gr.State`` (per tab, deep-copyable); nothing here imports gradio.
"""

from __future__ import annotations

import logging
from typing import Any

from ..store import LabelStore
from .labelling import as_text, new_event_id

__all__ = ["Entry", "History", "action_entry", "new_history", "pushed", "redo_last", "undo_last"]

_logger = logging.getLogger(__name__)

History = dict[str, list[dict[str, Any]]]
Entry = dict[str, Any]  # action ("label", "unsure", "archive"), label, source, events: [[image_id, event_id], ...]
_DEPTH = 50  # entries kept per stack


def new_history() -> History:
    """Empty undo and redo stacks."""
    return {"undo": [], "redo": []}


def action_entry(action: str, events: list[tuple[int, int]], *, label: str | None = None,
                 source: str = "expert") -> Entry:  # fmt: skip
    """One undoable action: what it did and the ``(image id, event id)`` pairs it stored."""
    return {"action": action, "label": label, "source": source, "events": [[int(i), int(e)] for i, e in events]}


def pushed(history: History | None, item: Entry) -> History:
    """``history`` with ``item`` on the undo stack; a new action clears the redo stack."""
    undo = [*(history or new_history())["undo"], item][-_DEPTH:]
    return {"undo": undo, "redo": []}


def _name(store: LabelStore, image_id: int) -> str:
    row = store.image(image_id)
    name = row.get("original_name")
    return f"image #{image_id}" + (f" ({name})" if name else "")  # original_name is stored HTML-escaped


def _undo_one(store: LabelStore, action: str, image_id: int, event_id: int, user: str) -> str | None:
    """Undo one stored event; returns what the image is now, or None when it changed since (left alone)."""
    if action == "archive":
        state = store.archive_state(image_id)
        if state is None or state["event_id"] != event_id or state["deleted"]:
            return None
        store.restore_image(image_id, client_event_id=new_event_id("restore"), user=user)
        return "back in the queues"
    current = store.current_label(image_id)
    if current is None or current["id"] != event_id:
        return None
    result = store.undo(image_id, client_event_id=new_event_id("undo"), user=user)
    return f"back to {as_text(result.current) if result.current else 'no label'}"


def undo_last(store: LabelStore, history: History | None, *, user: str) -> tuple[History, str, list[int]]:
    """Take back the newest action of this session.

    Returns:
        (new history, a message naming the images it restored, the ids of those images).
    """
    history = history or new_history()
    if not history["undo"]:
        return history, "Nothing to undo in this session.", []
    item, rest = history["undo"][-1], history["undo"][:-1]
    restored, left = [], []
    for image_id, event_id in item["events"]:
        now = _undo_one(store, item["action"], image_id, event_id, user)
        (restored if now is not None else left).append((image_id, now))
    message = _describe("Undone", store, restored, left)
    redo = [*history["redo"], item][-_DEPTH:] if restored else history["redo"]
    return {"undo": rest, "redo": redo}, message, [i for i, _ in restored]


def redo_last(store: LabelStore, history: History | None, *, user: str) -> tuple[History, str, list[int]]:
    """Store the newest undone action again (new events); returns like :func:`undo_last`."""
    history = history or new_history()
    if not history["redo"]:
        return history, "Nothing to redo.", []
    item, rest = history["redo"][-1], history["redo"][:-1]
    done: list[tuple[int, str | None]] = []
    events: list[tuple[int, int]] = []
    for image_id, _ in item["events"]:
        if item["action"] == "archive":
            result = store.archive_image(image_id, client_event_id=new_event_id("archive"), user=user)
            events.append((image_id, result.event_id))
            done.append((image_id, "archived again"))
            continue
        result = store.record_label(image_id, item["label"], client_event_id=new_event_id("redo"), user=user,
                                    source=item["source"], kind=item["action"], allow_new_cultivar=False)  # fmt: skip
        events.append((image_id, result.event_id))
        what = "unsure" if item["action"] == "unsure" else as_text(item["label"])
        done.append((image_id, f"{'marked' if item['action'] == 'unsure' else 'labelled'} {what} again"))
    again = action_entry(item["action"], events, label=item["label"], source=item["source"])
    message = _describe("Redone", store, done, [])
    return {"undo": [*history["undo"], again][-_DEPTH:], "redo": rest}, message, [i for i, _ in done]


def _describe(verb: str, store: LabelStore, done: list[tuple[int, Any]], left: list[tuple[int, Any]]) -> str:
    """E.g. "Undone: image #228 (leaf.png) is back to Birch-02."."""
    if len(done) == 1:
        image_id, now = done[0]
        text = f"{verb}: {_name(store, image_id)} is {now}."
    elif done:
        shown = ", ".join(f"#{i}" for i, _ in done[:8]) + (" …" if len(done) > 8 else "")
        text = f"{verb} on {len(done)} images ({shown})."
    else:
        text = "Nothing undone."
    if left:
        ids = ", ".join(f"#{i}" for i, _ in left[:8])
        text += f" Left alone: {ids} changed since (by someone else or another tab)."
    return text
