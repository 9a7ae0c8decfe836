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


def test_dropping_embeddings_removes_every_row_of_an_image(tmp_path):
    """drop() rewrites each shard without the image's rows, in every namespace; a fresh store finds none."""
    import torch

    from ila_core.embeddings import EmbeddingStore

    a, b, c = (f"{n:064x}" for n in (1, 2, 3))
    store = EmbeddingStore(tmp_path)
    store.put("backbone-x/view0", [a, b], torch.ones(2, 4))
    store.put("backbone-x/view1", [a], torch.full((1, 4), 2.0))
    store.put("backbone-x/view1", [c], torch.full((1, 4), 3.0))
    assert store.get("backbone-x/view0", [a])[0] == [True]  # loaded in memory before the drop
    assert store.drop([a]) == 2
    for fresh in (store, EmbeddingStore(tmp_path)):
        assert fresh.get("backbone-x/view0", [a, b])[0] == [False, True]
        mask, rows = fresh.get("backbone-x/view1", [a, c])
        assert mask == [False, True] and rows[1, 0].item() == 3.0
    assert store.drop([a]) == 0
    memory = EmbeddingStore()
    memory.put("n", [a], torch.ones(1, 2))
    assert memory.drop([a]) == 1 and memory.get("n", [a])[0] == [False]


def test_deleting_an_image_for_good_drops_its_embeddings(tmp_path):
    """The admin delete takes the file, the thumbnail and the frozen embeddings (no exemplar can show it again)."""
    import contextlib
    from types import SimpleNamespace

    import torch

    from ila_core.embeddings import EmbeddingStore
    from ila_core.ui.removal import delete_image_file

    db = tmp_path / "ila.db"
    (tmp_path / "images").mkdir()
    with LabelStore.open(db) as store:
        a, b = _add(store, 1, split="train"), _add(store, 2, split="train")
    (tmp_path / "images" / "1.jpg").write_bytes(b"x")
    embeddings = EmbeddingStore(tmp_path / "cache" / "embeddings")
    embeddings.put("ns", [f"{1:064x}", f"{2:064x}"], torch.ones(2, 3))
    forgotten = []
    studio = SimpleNamespace(
        data_dir=tmp_path, embeddings=embeddings, thumbs=SimpleNamespace(forget=forgotten.append),
        require_admin=lambda request, what: "admin",
        store=lambda: contextlib.closing(LabelStore.open(db)),
    )  # fmt: skip
    assert "deleted for good" in delete_image_file(studio, a, None)
    assert not (tmp_path / "images" / "1.jpg").exists() and forgotten == [f"{1:064x}"]
    fresh = EmbeddingStore(tmp_path / "cache" / "embeddings")
    assert fresh.get("ns", [f"{1:064x}", f"{2:064x}"])[0] == [False, True]
    with LabelStore.open(db) as store:
        assert store.archive_state(a)["deleted"] == 1 and store.archive_state(b) is None


def test_review_archives_a_selection_as_one_undoable_action(tmp_path):
    """Archive selected on the Review tab: one entry on the page's undo stack; undo brings every image back."""
    import contextlib
    from types import SimpleNamespace

    from ila_core.ui.errors import UserFacing
    from ila_core.ui.history import undo_last
    from ila_core.ui.removal import archive_selected

    db = tmp_path / "ila.db"
    with LabelStore.open(db) as store:
        a, b, c = (_add(store, n, split="train") for n in (1, 2, 3))
        store.archive_image(c, client_event_id="before", user="ann")
    studio = SimpleNamespace(store=lambda: contextlib.closing(LabelStore.open(db)))
    text, hist = archive_selected(studio, [str(a), str(b), str(c), str(a)], None, "ann")
    assert text.startswith("Archived 2 image(s)") and "1 were archived already" in text and "Undo" in text
    assert len(hist["undo"]) == 1 and hist["undo"][0]["action"] == "archive"
    with LabelStore.open(db) as store:
        assert store.count_images() == 0
        hist, said, restored = undo_last(store, hist, user="ann")
        assert sorted(restored) == [a, b] and store.count_images() == 2 and store.archive_state(c) is not None
    with pytest.raises(UserFacing, match="Select at least one"):
        archive_selected(studio, [], None, "ann")
