"""Queues, counts and duplicate lookups in SQL: ``scores``, ``queue_page``, ``label_counts_by_split``, 0003."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlite_utils import Database

from ila_core.store import QUEUE_SORTS, LabelStore, migrations


def _sha(i: int) -> str:
    return hashlib.sha256(f"image-{i}".encode()).hexdigest()


def _add(store: LabelStore, i: int, split: str | None = None) -> int:
    image_id, _ = store.add_image(sha256=_sha(i), rel_path=f"images/{i}.png", width=8, height=8, fmt="PNG",
                                  split=split, metadata={"stored_sha256": _sha(10_000 + i)})  # fmt: skip
    return image_id


def _version(store: LabelStore) -> int:
    return store.add_model_version(path="adapters/v.safetensors", sha256="a" * 64, manifest={}, metrics={},
                                   parent_id=None, snapshot_event_id=0, job_id=None)  # fmt: skip


@pytest.fixture
def scored():
    """300 images (a third labelled a/b, some unsure, one archived), all scored by one version."""
    store = LabelStore.in_memory()
    ids = [_add(store, i, "train" if i % 3 == 0 else None) for i in range(300)]
    for n, image_id in enumerate(ids):
        if n % 3 == 0:
            store.record_label(image_id, "a" if n % 2 else "b", client_event_id=f"l{n}")
        elif n % 10 == 1:
            store.record_label(image_id, None, kind="unsure", client_event_id=f"u{n}")
    version = _version(store)
    rows = [(image_id, [("a", 0.5 + (n % 50) / 100), ("b", 0.5 - (n % 50) / 100)]) for n, image_id in enumerate(ids)]
    store.add_predictions(version, rows, similarities={image_id: (n % 7) / 10 for n, image_id in enumerate(ids)})
    store.archive_image(ids[3], client_event_id="arch")
    yield store, ids, version
    store.close()


def test_every_sort_is_one_ordered_page_and_pages_move_on(scored):
    """Each sort returns pages in its order; page 2 continues page 1; totals count the whole queue."""
    store, ids, version = scored
    for sort in QUEUE_SORTS:
        first = store.queue_page(sort, version_id=version, limit=50)
        second = store.queue_page(sort, version_id=version, limit=50, offset=50)
        seen = [i.image_id for i in first.items + second.items]
        assert len(seen) == len(set(seen)) and ids[3] not in seen, sort  # no repeats, archived left out
        assert first.scored == 299 and first.total >= len(seen), sort
    margins = [i.margin for i in store.queue_page("margin", version_id=version, limit=500).items]
    assert len(margins) == 299 and margins == sorted(margins)
    unlike = [i.nearest_similarity for i in store.queue_page("unlike", version_id=version, limit=500).items]
    assert unlike == sorted(unlike)
    disagree = store.queue_page("disagree", version_id=version, limit=500).items
    assert disagree and all(i.label and i.label != i.top1 for i in disagree)
    assert all(i.label_kind == "unsure" for i in store.queue_page("unsure", version_id=version, limit=500).items)
    newest = [i.image_id for i in store.queue_page("newest", version_id=version, limit=10).items]
    assert newest == sorted(newest, reverse=True) and newest[0] == ids[-1]


def test_filters_and_no_model(scored):
    """Cultivar matches label or top-1, split 'pool' means unassigned; without a version score sorts are empty."""
    store, _, version = scored
    pool = store.queue_page("margin", version_id=version, split="pool", limit=500)
    assert pool.items and all(i.split is None for i in pool.items)
    only_b = store.queue_page("newest", version_id=version, cultivar="b", limit=500)
    assert only_b.items and all("b" in (i.label, i.top1) for i in only_b.items)
    assert store.queue_page("margin", version_id=None).total == 0
    assert store.queue_page("unlabelled", version_id=None).total == store.count_unlabelled()
    with pytest.raises(ValueError):
        store.queue_page("sideways", version_id=version)


def test_scores_follow_the_newest_prediction(scored):
    """Scoring an image again replaces its score row (the prediction log keeps both)."""
    store, ids, version = scored
    store.add_predictions(version, [(ids[1], [("b", 0.99), ("a", 0.01)])])
    item = next(i for i in store.queue_page("margin", version_id=version, limit=500).items if i.image_id == ids[1])
    assert item.top1 == "b" and item.margin == pytest.approx(0.98) and item.nearest_similarity is not None
    assert store.count_scored(version) == 299
    assert len([p for p in store.db.query("SELECT id FROM predictions WHERE image_id = ?", [ids[1]])]) == 2


def test_unscored_walk_and_similarities(scored):
    """unscored_images lists what a new version has not scored; similarities are filled in afterwards."""
    store, ids, _ = scored
    newer = _version(store)
    todo = store.unscored_images(newer, limit=500)
    assert len(todo) == 299
    store.add_predictions(newer, [(r["id"], [("a", 1.0)]) for r in todo[:10]])
    assert store.unscored_images(newer, after_id=0, limit=5)[0]["id"] == todo[10]["id"]
    missing = store.scored_rows(newer, missing_similarity=True)
    assert len(missing) == 10
    assert store.set_similarities(newer, {r["id"]: 0.5 for r in missing}) == 10
    assert store.scored_rows(newer, missing_similarity=True) == []


def test_label_counts_group_by_matches_the_snapshot(scored):
    """The GROUP BY counts equal a count over labelled_items, per split and overall."""
    store, _, _ = scored
    for split in (None, "train", "holdout", "pool"):
        expected: dict[str, int] = {}
        for item in store.labelled_items(split=split):
            expected[item.label] = expected.get(item.label, 0) + 1
        assert store.label_counts(split=split) == expected, split


def test_pool_walk_pages_past_any_size(scored):
    """unlabelled_images walks every image without a label event, page after page, then ends."""
    store, _, _ = scored
    seen, after = [], 0
    while page := store.unlabelled_images(after_id=after, limit=24):
        seen += [r["id"] for r in page]
        after = page[-1]["id"]
    assert len(seen) == store.count_unlabelled() > 96 and seen == sorted(seen)


def test_image_by_content_finds_the_stored_copy(scored):
    """An original hash and a stored-copy hash both find the image, through indexes."""
    store, ids, _ = scored
    assert store.image_by_content(_sha(5))["id"] == ids[5]
    assert store.image_by_content(_sha(10_005))["id"] == ids[5]
    assert store.image_by_content("f" * 64) is None
    plan = " ".join(str(r) for r in store.db.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM images WHERE stored_sha256 = ?", ["f" * 64]).fetchall())  # fmt: skip
    assert "images_stored_sha256" in plan


def test_migration_0003_backfills_scores_and_stored_hashes(tmp_path: Path):
    """A store with predictions made before 0003 gets one score per (version, image), from the newest one."""
    path = tmp_path / "ila.db"
    db = Database(path)
    migrations.apply(db, stop_before="0003_scores_and_stored_sha256")
    db.execute("""INSERT INTO images (sha256, rel_path, width, height, format, metadata, created_at)
                  VALUES (?, 'images/x.png', 8, 8, 'PNG', ?, 'now')""", [_sha(1), f'{{"stored_sha256": "{_sha(2)}"}}'])
    db.execute("""INSERT INTO model_versions (path, sha256, snapshot_event_id, created_at)
                  VALUES ('adapters/v', ?, 0, 'now')""", ["a" * 64])  # fmt: skip
    for topk in ('[{"label": "a", "prob": 0.6}, {"label": "b", "prob": 0.4}]', '[{"label": "b", "prob": 0.9}]'):
        db.execute("INSERT INTO predictions (image_id, model_version_id, topk, created_at) VALUES (1, 1, ?, 'now')",
                   [topk])  # fmt: skip
    db.conn.commit()
    db.close()
    with LabelStore.open(path) as store:
        page = store.queue_page("margin", version_id=1)
        assert [(i.top1, i.margin) for i in page.items] == [("b", pytest.approx(0.9))] and page.scored == 1
        assert store.image_by_content(_sha(2))["id"] == 1
