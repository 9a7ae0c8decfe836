"""The session undo/redo stacks: undo takes back the newest action wherever it was, redo stores it again."""

from __future__ import annotations

from ila_core.store import LabelStore
from ila_core.ui.history import action_entry, new_history, pushed, redo_last, undo_last


def _store_with_images(n: int) -> tuple[LabelStore, list[int]]:
    store = LabelStore.in_memory()
    store.add_cultivar("Birch")
    store.add_cultivar("Fenn")
    ids = [store.add_image(sha256=f"{i:064x}", rel_path=f"images/{i}.png", width=8, height=8, fmt="PNG",
                           original_name=f"leaf{i}.png")[0] for i in range(n)]  # fmt: skip
    return store, ids


def _label(store: LabelStore, history, image_id: int, label: str, cid: str):
    result = store.record_label(image_id, label, client_event_id=cid)
    return pushed(history, action_entry("label", [(image_id, result.event_id)], label=label))


def test_undo_takes_back_the_last_action_not_the_image_on_screen():
    """Label image a then b: Undo restores b (named in the message), then a; redo labels a again."""
    store, (a, b) = _store_with_images(2)
    history = _label(store, new_history(), a, "Birch", "e1")
    history = _label(store, history, b, "Fenn", "e2")
    history, message, ids = undo_last(store, history, user="ann")
    assert ids == [b] and "image #" in message and "leaf1.png" in message and store.current_label(b) is None
    history, _, ids = undo_last(store, history, user="ann")
    assert ids == [a] and store.current_label(a) is None
    assert undo_last(store, history, user="ann")[1] == "Nothing to undo in this session."
    history, message, ids = redo_last(store, history, user="ann")
    assert ids == [a] and store.current_label(a)["label"] == "Birch" and "again" in message
    assert [e["kind"] for e in store.label_history(a)] == ["label", "undo", "label"]  # append-only


def test_undo_leaves_an_image_someone_else_changed_since():
    """Another user's newer label is not undone by this session."""
    store, (a,) = _store_with_images(1)
    history = _label(store, new_history(), a, "Birch", "mine")
    store.record_label(a, "Fenn", client_event_id="theirs", user="bob")
    _, message, ids = undo_last(store, history, user="ann")
    assert ids == [] and "changed since" in message and store.current_label(a)["label"] == "Fenn"


def test_archive_is_undone_by_a_restore_event():
    """Undo of an archive restores the image into the queues."""
    store, (a,) = _store_with_images(1)
    result = store.archive_image(a, client_event_id="ar")
    history = pushed(new_history(), action_entry("archive", [(a, result.event_id)]))
    _, message, ids = undo_last(store, history, user="ann")
    assert ids == [a] and "back in the queues" in message and [r["id"] for r in store.images()] == [a]
