"""Archiving images: an undoable event that hides an image from queues, training and exports; delete for good."""

from __future__ import annotations

import pytest

from ila_core.store import LabelStore


def _add(store: LabelStore, n: int, **kwargs) -> int:
    image_id, _ = store.add_image(sha256=f"{n:064x}", rel_path=f"images/{n}.jpg", width=32, height=24, fmt="JPEG",
                                  **kwargs)  # fmt: skip
    return image_id


def test_archive_hides_an_image_and_restore_brings_it_back():
    """Archived images leave images(), counts and training snapshots; restore is a new event, not an edit."""
    store = LabelStore.in_memory()
    a, b = _add(store, 1, split="train"), _add(store, 2, split="train")
    store.record_label(a, "Birch", client_event_id="l1")
    store.record_label(b, "Birch", client_event_id="l2")
    result = store.archive_image(a, client_event_id="ar1", user="ann")
    assert result.created and result.archived and not result.deleted
    assert [r["id"] for r in store.images()] == [b]
    assert store.count_images() == 1 and store.count_images(archived=None) == 2
    assert [r["id"] for r in store.images(archived=True)] == [a]
    assert [i.image_id for i in store.labelled_items()] == [b]
    assert store.image(a)["archived"] == 1  # still readable by id (its history refers to it)
    assert store.archive_image(a, client_event_id="ar1").created is False  # a double submit stores nothing
    store.restore_image(a, client_event_id="re1", user="ann")
    assert [r["id"] for r in store.images()] == [a, b]
    assert [e["action"] for e in store.image_events(a)] == ["archive", "restore"]
    with pytest.raises(Exception, match="append-only"):
        store.db.execute("DELETE FROM image_events")


def test_a_deleted_image_cannot_be_restored():
    """Delete for good is final: the row and its history stay, restore is refused."""
    store = LabelStore.in_memory()
    a = _add(store, 3)
    store.archive_image(a, client_event_id="ar")
    assert store.mark_deleted(a, client_event_id="del").deleted
    with pytest.raises(ValueError, match="deleted for good"):
        store.restore_image(a, client_event_id="re")
    assert store.archive_state(a)["deleted"] == 1


@pytest.mark.parametrize("fmt", ["csv", "labelstudio"])
def test_an_archived_image_is_left_out_of_label_exports(tmp_path, fmt):
    """CSV and Label Studio exports list the images still in the store's queues, not the archived one."""
    from ila_core.data.exporters import export
    from ila_core.store import DB_NAME

    with LabelStore.open(tmp_path / DB_NAME) as store:
        kept, gone = _add(store, 10, split="train"), _add(store, 11, split="train")
        store.record_label(kept, "Birch", client_event_id="k")
        store.record_label(gone, "Birch", client_event_id="g")
        store.archive_image(gone, client_event_id="a")
    out = tmp_path / "out" / ("labels.csv" if fmt == "csv" else "tasks.json")
    out.parent.mkdir()
    export(tmp_path, out, fmt=fmt)
    text = out.read_text()
    assert "images/10.jpg" in text and "images/11.jpg" not in text
