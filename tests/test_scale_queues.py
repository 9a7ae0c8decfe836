"""Every image reachable at scale: the pool button pages on past 96, the background scorer covers every image.

The app test launches a studio without a model (no training), so it stays fast; the scorer is driven with a fake
model, which is all its batching, yielding and version-following need.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from ui_support import fn_index, launched, small_options

from ila_core.serving.scorer import BackgroundScorer
from ila_core.store import LabelStore
from ila_core.training.toydata import toy_image

POOL = 130  # more than four pages of 24 (the old button stopped after 96)


def _add_images(data_dir: Path, count: int, *, labelled: int = 0) -> list[int]:
    """``count`` small PNGs in the store, the first ``labelled`` of them labelled 'a'."""
    data_dir.mkdir(parents=True, exist_ok=True)
    ids = []
    with LabelStore.open(data_dir / "ila.db") as store, store.batch():
        for i in range(count):
            buf = io.BytesIO()
            toy_image(i % 3, i, size=16).save(buf, format="PNG")
            sha = hashlib.sha256(buf.getvalue()).hexdigest()
            path = data_dir / "images" / sha[:2] / f"{sha}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(buf.getvalue())
            image_id, _ = store.add_image(sha256=sha, rel_path=f"images/{sha[:2]}/{sha}.png", width=16, height=16,
                                          fmt="PNG")  # fmt: skip
            if i < labelled:
                store.record_label(image_id, "a", client_event_id=f"t{i}")
            ids.append(image_id)
    return ids


def _click(url: str, index: int, session: str, http: httpx.Client, data: list | None = None) -> dict:
    """One click of a private UI event in a fixed browser session (its gr.State values live on the server)."""
    body = {"data": data or [None, None], "fn_index": index, "session_hash": session, "event_data": None, "trigger_id": None}
    assert http.post(f"{url.rstrip('/')}/gradio_api/queue/join", json=body, timeout=30).status_code == 200
    with http.stream("GET", f"{url.rstrip('/')}/gradio_api/queue/data", params={"session_hash": session},
                     timeout=30) as r:  # fmt: skip
        for line in r.iter_lines():
            if line.startswith("data:") and (msg := json.loads(line[5:])).get("msg") == "process_completed":
                return msg
    raise AssertionError("no process_completed")


def test_open_next_unlabelled_pages_past_96_then_wraps(tmp_path):
    """Clicking 'Open next unlabelled images' moves on page by page past 96, then starts again from the oldest."""
    data_dir = tmp_path / "data"
    _add_images(data_dir, POOL + 5, labelled=5)
    options = small_options(start_worker=False, seed_demo=False, background_embedding=False)
    with launched(data_dir, options) as (_, url, _studio), httpx.Client() as http:
        index, session = fn_index(url, "ui_open_pool", http), uuid.uuid4().hex
        reports = []
        for _ in range(6):  # 24 + 24 + 24 + 24 + 24 + 10 = 130
            msg = _click(url, index, session, http)
            assert msg["success"], msg
            reports.append(msg["output"]["data"][2])
        assert all(r.startswith("Opened ") for r in reports) and "Opened 10 " in reports[-1]
        assert "#126–#135" in reports[-1]  # the fifth click and later reach past the first 96 images
        last = _click(url, index, session, http)  # all 130 are open in this session now
        assert not last["success"] and "already open in this session" in json.dumps(last)
        fresh = _click(url, index, uuid.uuid4().hex, http)  # a new browser tab starts at the oldest again
        assert fresh["success"] and "#6–#29" in fresh["output"]["data"][2]


def test_review_pages_move_on(tmp_path):
    """The Review tab's Page box moves the queue on by a page; the note says which page of how many."""
    data_dir = tmp_path / "data"
    _add_images(data_dir, 60)
    options = small_options(start_worker=False, seed_demo=False, background_embedding=False)
    with launched(data_dir, options) as (_, url, _studio), httpx.Client() as http:
        index = fn_index(url, "ui_review", http)
        pages = [_click(url, index, uuid.uuid4().hex, http, ["newest", "All", "All", "serving", n]) for n in (1, 2)]
    assert all(p["success"] for p in pages), pages
    notes = [p["output"]["data"][4] for p in pages]
    assert notes[0].startswith("Page 1 of 2: showing 48 of 60") and notes[1].startswith("Page 2 of 2: showing 12")


def test_pool_walk_wraps_to_the_oldest_not_open(tmp_path):
    """After the last unlabelled image the walk starts again from the oldest one not open in the session."""
    from ila_core.ui.classify import _pool_page

    ids = _add_images(tmp_path / "data", 60)
    with LabelStore.open(tmp_path / "data" / "ila.db") as store:
        rows, wrapped = _pool_page(store, ids[-1], seen=set(ids[:10]))
    assert wrapped and [r["id"] for r in rows] == ids[10:34]


class _FakeModel:
    """Answers like ModelRuntime.predict_background; counts forwards and can be made 'busy'."""

    def __init__(self, version: int) -> None:
        self.version, self.calls, self.busy = version, 0, False

    def predict(self, images):
        self.calls += 1
        return self.version, [[("a", 0.7), ("b", 0.3)] for _ in images]


def test_background_scorer_scores_every_image_in_batches(tmp_path):
    """Every image gets a score for the served version, in batches; a new version scores them all again."""
    data_dir = tmp_path / "data"
    ids = _add_images(data_dir, 100)
    with LabelStore.open(data_dir / "ila.db") as store:
        v1 = store.add_model_version(path="adapters/a", sha256="a" * 64, manifest={}, metrics={}, parent_id=None,
                                     snapshot_event_id=0, job_id=None)  # fmt: skip
        v2 = store.add_model_version(path="adapters/b", sha256="b" * 64, manifest={}, metrics={}, parent_id=None,
                                     snapshot_event_id=0, job_id=None)  # fmt: skip
    model = _FakeModel(v1)
    sims = lambda rows: {int(r["id"]): 0.5 for r in rows if r["id"] % 2}  # noqa: E731  (half are "embedded")
    scorer = BackgroundScorer(data_dir / "ila.db", data_dir, predict=model.predict, version=lambda: model.version,
                              similarities=sims, batch_size=32)  # fmt: skip
    assert scorer.run_once() == 100 and model.calls == 4
    status = scorer.status()
    assert (status.version_id, status.scored, status.total, status.running) == (v1, 100, 100, False)
    with LabelStore.open(data_dir / "ila.db") as store:
        page = store.queue_page("margin", version_id=v1, limit=500)
        assert page.scored == page.total == 100
        assert sum(i.nearest_similarity is not None for i in page.items) == 50
    assert scorer.run_once() == 0  # nothing new
    model.version = v2
    assert scorer.run_once() == 100 and scorer.status().version_id == v2
    assert ids


def _one_version_store(tmp_path, n):
    """A store of ``n`` images and one model version: (data dir, version id)."""
    data_dir = tmp_path / "data"
    _add_images(data_dir, n)
    with LabelStore.open(data_dir / "ila.db") as store:
        version = store.add_model_version(path="adapters/a", sha256="a" * 64, manifest={}, metrics={},
                                          parent_id=None, snapshot_event_id=0, job_id=None)  # fmt: skip
    return data_dir, version


def test_stored_similarities_follow_the_confirmed_images(tmp_path):
    """When the confirmed set changes (a near copy gets confirmed), every stored similarity is recomputed."""
    data_dir, v1 = _one_version_store(tmp_path, 40)
    model = _FakeModel(v1)
    state = {"generation": 1, "similarity": 0.4}
    sims = lambda rows: {int(r["id"]): state["similarity"] for r in rows}  # noqa: E731
    scorer = BackgroundScorer(data_dir / "ila.db", data_dir, predict=model.predict, version=lambda: model.version,
                              similarities=sims, generation=lambda: state["generation"], refresh_every_s=0,
                              batch_size=32)  # fmt: skip

    def stored() -> set[float]:
        with LabelStore.open(data_dir / "ila.db") as store:
            return {i.nearest_similarity for i in store.queue_page("margin", version_id=v1, limit=100).items}

    assert scorer.run_once() == 40 and stored() == {0.4}
    scorer.run_once()  # idle: the generation these scores were computed against is noted
    state["similarity"] = 0.9  # a near copy of every image is confirmed now...
    scorer.run_once()
    assert stored() == {0.4}  # ...but the confirmed set's fingerprint has not changed: nothing recomputed
    state["generation"] = 2
    scorer.run_once()
    assert stored() == {0.9} and model.calls == 2  # recomputed from embeddings: no model forward


def test_background_scorer_waits_while_interactive_work_runs(tmp_path):
    """While busy() is true no batch starts; the scorer goes on once it clears."""
    data_dir, v1 = _one_version_store(tmp_path, 40)
    model = _FakeModel(v1)
    model.busy = True
    scorer = BackgroundScorer(data_dir / "ila.db", data_dir, predict=model.predict, version=lambda: model.version,
                              busy=lambda: model.busy, batch_size=16, poll_s=0.1)  # fmt: skip
    scorer.start()
    try:
        time.sleep(0.6)
        assert model.calls == 0 and scorer.status().running
        model.busy = False
        deadline = time.monotonic() + 20
        while scorer.status().scored < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert scorer.status().scored == 40 and model.calls == 3
    finally:
        scorer.stop()
    assert not any(t.name == "ila-score" and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize("sort", ["margin", "disagree", "unsure", "newest", "unlike", "unlabelled"])
def test_queue_sorts_use_an_index(tmp_path, sort):
    """Each queue's ORDER BY is served by an index (no temporary B-tree for sorting)."""
    from ila_core.store.queue import _FROM, _SORTS

    store = LabelStore.open(tmp_path / "ila.db")
    driver, where, order = _SORTS[sort]
    sql = f"SELECT 1 {_FROM.format(driver=driver)} WHERE {where} AND ar.image_id IS NULL ORDER BY {order} LIMIT 48"
    plan = " | ".join(str(tuple(r)) for r in store.db.execute(f"EXPLAIN QUERY PLAN {sql}", {"version": 1}))
    store.close()
    assert "USE TEMP B-TREE FOR ORDER BY" not in plan, plan
