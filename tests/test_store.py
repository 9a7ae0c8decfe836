"""LabelStore: schema, CRUD, label semantics, jobs and versions (catalogue ids in the docstrings).

Fault injection and concurrency live in ``test_store_faults.py``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ila_core.store import (
    LOST_MESSAGE,
    JobBusy,
    LabelStore,
    NothingToUndo,
    StoreError,
    UnknownCultivar,
    UnknownImage,
    UnknownJob,
    UnknownVersion,
    driver_module_name,
    migrations,
)
from ila_core.store import connection as store_connection
from sqlite_utils.utils import sqlite3


def _sha(n: int) -> str:
    return f"{n:064x}"


def _add(store: LabelStore, n: int, **kwargs) -> int:
    image_id, _ = store.add_image(sha256=_sha(n), rel_path=f"images/{n}.jpg", width=32, height=24, fmt="JPEG", **kwargs)
    return image_id


@pytest.fixture
def store():
    with LabelStore.in_memory() as s:
        yield s


@pytest.fixture
def file_store(tmp_path: Path):
    with LabelStore.open(tmp_path / "ila.db") as s:
        yield s


class _Clock:
    """A controllable UTC clock."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


# -- schema and connection ---------------------------------------------------------------------


def test_migrations_idempotent(tmp_path: Path):
    """Opening the same file twice applies every migration once and keeps the data."""
    path = tmp_path / "ila.db"
    with LabelStore.open(path) as first:
        image_id = _add(first, 1)
    with LabelStore.open(path) as second:
        applied = [m.name for m in migrations.applied(second.db)]
        assert applied[:2] == ["0001_initial", "0002_version_kind"] and "0004_image_archive" in applied
        assert second.image(image_id)["sha256"] == _sha(1)
        assert migrations.pending(second.db) == []


def test_migrations_numbered():
    """Every migration name starts with a 4-digit number, in order."""
    names = [m.name for m in migrations._migrations]
    assert names and all(name[:4].isdigit() and name[4] == "_" for name in names)
    assert names == sorted(names)


def test_cfg05_pragmas(file_store: LabelStore):
    """CFG-05: WAL, synchronous=FULL, busy_timeout >= 5000 ms, foreign keys on."""
    pragma = lambda name: file_store.db.execute(f"PRAGMA {name}").fetchone()[0]  # noqa: E731
    assert pragma("journal_mode") == "wal"
    assert pragma("synchronous") == 2
    assert pragma("busy_timeout") >= 5000
    assert pragma("foreign_keys") == 1


@pytest.mark.parametrize("statement", ["UPDATE label_events SET user = 'x'", "DELETE FROM label_events"])
def test_cfg05_label_events_append_only(file_store: LabelStore, statement: str):
    """CFG-05: triggers refuse UPDATE and DELETE on label_events."""
    image_id = _add(file_store, 1)
    file_store.record_label(image_id, "A", client_event_id="c1")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        file_store.db.execute(statement)
    assert len(file_store.label_history()) == 1


def test_predictions_never_overwritten(store: LabelStore):
    """Predictions are append-only: UPDATE is refused by a trigger."""
    image_id = _add(store, 1)
    version = store.add_model_version(
        path="adapters/v1.safetensors", sha256=_sha(9), manifest={}, metrics={}, parent_id=None,
        snapshot_event_id=0, job_id=None,
    )
    store.add_predictions(version, [(image_id, [("A", 0.7), ("B", 0.2)])])
    with pytest.raises(sqlite3.IntegrityError, match="never overwritten"):
        store.db.execute("UPDATE predictions SET topk = '[]'")


def test_driver_is_pysqlite3_when_installed():
    """CFG-01/FLT-23: sqlite-utils picked pysqlite3 and its SQLite is new enough."""
    pytest.importorskip("pysqlite3")
    assert driver_module_name() == "pysqlite3"
    assert store_connection.check_sqlite_version(sqlite3.sqlite_version)


def test_flt23_old_sqlite_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    """FLT-23: opening with SQLite < 3.51.3 logs a loud warning naming pysqlite3."""
    monkeypatch.setattr(store_connection, "_library_version", lambda conn: "3.40.1")
    with caplog.at_level(logging.WARNING, logger="ila_core.store.connection"):
        LabelStore.open(tmp_path / "ila.db").close()
    assert any("3.40.1" in r.getMessage() and "pysqlite3" in r.getMessage() for r in caplog.records)


def test_flt23_current_sqlite_is_quiet(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """FLT-23: a fixed SQLite opens without the version warning."""
    pytest.importorskip("pysqlite3")
    with caplog.at_level(logging.WARNING, logger="ila_core.store.connection"):
        LabelStore.open(tmp_path / "ila.db").close()
    assert not [r for r in caplog.records if "older than" in r.getMessage()]


# -- images and cultivars ------------------------------------------------------------------------


def test_add_image_dedupes_by_sha256(store: LabelStore):
    """A second add of the same content returns the first id and created=False."""
    first = store.add_image(sha256=_sha(1), rel_path="images/a.jpg", width=4, height=3, fmt="JPEG")
    again = store.add_image(sha256=_sha(1), rel_path="images/b.jpg", width=4, height=3, fmt="JPEG")
    assert first == (1, True) and again == (1, False)
    assert store.count_images() == 1 and store.image(1)["rel_path"] == "images/a.jpg"


def test_image_metadata_and_escaped_name(store: LabelStore):
    """Metadata round-trips as JSON; the original name is kept as escaped display text only."""
    image_id = _add(store, 1, original_name="C:\\upload\\<img src=x>.jpg", metadata={"plot": "P7", "growth_stage": 3})
    row = store.image(image_id)
    assert row["metadata"] == {"plot": "P7", "growth_stage": 3}
    assert row["original_name"] == "&lt;img src=x&gt;.jpg"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sha256": "ABC"},
        {"rel_path": "/etc/passwd"},
        {"rel_path": "../outside.jpg"},
        {"width": 0},
        {"split": "test"},
        {"metadata": {"x": object()}},
    ],
)
def test_add_image_rejects_bad_arguments(store: LabelStore, kwargs: dict):
    """Bad image arguments raise ValueError and write nothing."""
    args = dict(sha256=_sha(1), rel_path="images/1.jpg", width=4, height=3, fmt="JPEG") | kwargs
    with pytest.raises(ValueError):
        store.add_image(**args)
    assert store.count_images() == 0


def test_unknown_ids_raise_value_error(store: LabelStore):
    """Unknown image, job and version ids raise the store's NotFound errors, which are ValueErrors."""
    for call, error in [
        (lambda: store.image(99), UnknownImage),
        (lambda: store.record_label(99, "A", client_event_id="x"), UnknownImage),
        (lambda: store.set_split([99], "train"), UnknownImage),
        (lambda: store.current_label(99), UnknownImage),
        (lambda: store.label_history(99), UnknownImage),
        (lambda: store.undo(99, client_event_id="y"), UnknownImage),
        (lambda: store.job(99), UnknownJob),
        (lambda: store.model_version(99), UnknownVersion),
        (lambda: store.activate_version(99), UnknownVersion),
        (lambda: store.images(cultivar="nope"), UnknownCultivar),
    ]:
        with pytest.raises(error) as info:
            call()
        assert isinstance(info.value, ValueError) and isinstance(info.value, StoreError)


def test_split_filters_and_set_split(store: LabelStore):
    """set_split moves images between train/holdout/pool; unknown split names are refused."""
    ids = [_add(store, n) for n in range(4)]
    assert store.set_split(ids[:2], "train") == 2
    store.set_split([ids[2]], "holdout")
    assert [r["id"] for r in store.images(split="train")] == ids[:2]
    assert [r["id"] for r in store.images(split="pool")] == [ids[3]]
    assert store.count_images(split="holdout") == 1
    with pytest.raises(ValueError, match="unknown split"):
        store.set_split(ids, "validation")


def test_images_paging_and_label_filters(store: LabelStore):
    """images() pages by id and filters by cultivar and labelled state."""
    ids = [_add(store, n) for n in range(5)]
    store.record_label(ids[0], "A", client_event_id="1")
    store.record_label(ids[1], "B", client_event_id="2")
    store.record_label(ids[2], "A", client_event_id="3", kind="unsure")
    assert [r["id"] for r in store.images(limit=2, offset=1)] == ids[1:3]
    assert [r["id"] for r in store.images(cultivar="A")] == [ids[0]]
    assert [r["id"] for r in store.images(labelled=False)] == ids[2:]
    assert store.count_images(labelled=True) == 2


def test_cultivars_in_creation_order(store: LabelStore):
    """add_cultivar is idempotent and cultivars() keeps creation order."""
    assert store.add_cultivar("Merlot") == store.add_cultivar("Merlot")
    store.add_cultivar("Albariño")
    assert store.cultivars() == ["Merlot", "Albariño"]


# -- labels ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "problem"),
    [("", "empty"), ("   ", "empty"), ("x" * 201, "characters long"), ("x" * 10_000, "characters long"),
     ("a\x00b", "control"), ("Merlot\u202e", "control"), ("Merlot ", "whitespace"), (42, "string")],
)
def test_bad_labels_refused(store: LabelStore, label, problem: str):
    """Empty, over-long, control-character or padded labels raise ValueError naming the problem."""
    image_id = _add(store, 1)
    with pytest.raises(ValueError, match=problem):
        store.record_label(image_id, label, client_event_id="c1")
    assert store.label_history() == []


@pytest.mark.parametrize("label", ["=cmd|' /C calc'!A0", "<script>alert(1)</script>", "+SUM(1)", "Pinot 'Noir' & co"])
def test_formula_and_html_labels_stored_verbatim(store: LabelStore, label: str):
    """Labels that look like formulas or HTML are stored unchanged (exporters neutralise them)."""
    image_id = _add(store, 1)
    store.record_label(image_id, label, client_event_id="c1")
    assert store.current_label(image_id)["label"] == label


def test_record_label_and_history(store: LabelStore):
    """Each correction is a new event; the current label follows; history is in id order."""
    image_id = _add(store, 1)
    first = store.record_label(image_id, "A", client_event_id="c1", user="ana", note="leaf 3")
    second = store.record_label(image_id, "B", client_event_id="c2", user="ben")
    assert (first.previous, second.previous, second.current) == (None, "A", "B")
    assert store.current_label(image_id)["label"] == "B"
    history = store.label_history(image_id)
    assert [(e["label"], e["user"], e["note"]) for e in history] == [("A", "ana", "leaf 3"), ("B", "ben", None)]
    assert store.last_event_id() == second.event_id


def test_undo_is_a_new_event_restoring_previous(store: LabelStore):
    """Undo pops the label stack with new events; nothing to undo raises NothingToUndo."""
    image_id = _add(store, 1)
    store.record_label(image_id, "A", client_event_id="c1")
    store.record_label(image_id, "B", client_event_id="c2")
    assert store.undo(image_id, client_event_id="u1").current == "A"
    assert store.undo(image_id, client_event_id="u2").current is None
    assert store.current_label(image_id) is None
    with pytest.raises(NothingToUndo):
        store.undo(image_id, client_event_id="u3")
    assert [e["kind"] for e in store.label_history(image_id)] == ["label", "label", "undo", "undo"]
    assert store.replay_current_labels() == store.derived_current_labels()


def test_con04_double_submit_stores_one_event(store: LabelStore):
    """CON-04: the same client_event_id twice stores exactly one event."""
    image_id = _add(store, 1)
    first = store.record_label(image_id, "A", client_event_id="click-1")
    again = store.record_label(image_id, "A", client_event_id="click-1")
    assert first.created and not again.created and again.event_id == first.event_id
    assert len(store.label_history()) == 1


def test_con04_reused_client_id_for_other_label_refused(store: LabelStore):
    """CON-04: reusing a client_event_id for a different correction is refused, not merged."""
    image_id = _add(store, 1)
    store.record_label(image_id, "A", client_event_id="click-1")
    with pytest.raises(ValueError, match="already used"):
        store.record_label(image_id, "B", client_event_id="click-1")


def test_con03_stale_expectation_reports_conflict(store: LabelStore):
    """CON-03: both corrections stored; current = later commit; the later one sees the conflict."""
    image_id = _add(store, 1)
    store.record_label(image_id, "A", client_event_id="seed")
    ana = store.record_label(image_id, "B", client_event_id="ana", expected_current="A")
    ben = store.record_label(image_id, "C", client_event_id="ben", expected_current="A")
    assert not ana.conflict and ben.conflict and ben.previous == "B"
    assert store.current_label(image_id)["label"] == "C"
    assert [e["label"] for e in store.label_history(image_id)] == ["A", "B", "C"]


def test_expected_none_means_unlabelled(store: LabelStore):
    """expected_current=None is an expectation ('unlabelled'), so a label seen meanwhile is a conflict."""
    image_id = _add(store, 1)
    assert not store.record_label(image_id, "A", client_event_id="1", expected_current=None).conflict
    assert store.record_label(image_id, "B", client_event_id="2", expected_current=None).conflict


def test_unsure_and_between_kinds(store: LabelStore):
    """'between' needs a second cultivar; 'unsure' and 'between' are not hard labels for training."""
    a, b = _add(store, 1), _add(store, 2)
    store.record_label(a, "A", client_event_id="1", kind="between", alt_label="B")
    store.record_label(b, None, client_event_id="2", kind="unsure")
    assert store.current_label(a)["alt_label"] == "B"
    assert store.labelled_items() == []
    with pytest.raises(ValueError):
        store.record_label(a, "A", client_event_id="3", kind="between")
    with pytest.raises(ValueError, match="unknown label kind"):
        store.record_label(a, "A", client_event_id="4", kind="undo")


def test_unknown_cultivar_refused_when_asked(store: LabelStore):
    """allow_new_cultivar=False refuses a name that is not a cultivar yet (typo guard)."""
    image_id = _add(store, 1)
    with pytest.raises(UnknownCultivar):
        store.record_label(image_id, "Merlott", client_event_id="1", allow_new_cultivar=False)
    assert store.cultivars() == []


def test_bulk_label_all_or_nothing(store: LabelStore):
    """bulk_label writes one transaction: an unknown id writes nothing; a resubmit writes nothing new."""
    ids = [_add(store, n) for n in range(3)]
    with pytest.raises(UnknownImage):
        store.bulk_label([*ids, 99], "A", client_event_id="bulk-1")
    assert store.label_history() == []
    events = store.bulk_label(ids, "A", client_event_id="bulk-1", user="ana")
    assert store.bulk_label(ids, "A", client_event_id="bulk-1", user="ana") == events
    assert [store.current_label(i)["source"] for i in ids] == ["bulk"] * 3


def test_con09_snapshot_excludes_later_corrections(store: LabelStore):
    """CON-09: labelled_items(max_event_id=job snapshot) ignores corrections and undos made after it."""
    a, b, c = (_add(store, n) for n in range(3))
    store.set_split([a, b, c], "train")
    store.record_label(a, "A", client_event_id="1")
    store.record_label(b, "B", client_event_id="2")
    job = store.job(store.enqueue_job("train", {"epochs": 1}))
    store.record_label(a, "Z", client_event_id="3")
    store.undo(b, client_event_id="4")
    store.record_label(c, "C", client_event_id="5")
    snapshot = store.labelled_items(split="train", max_event_id=job["snapshot_event_id"])
    assert [(i.image_id, i.label) for i in snapshot] == [(a, "A"), (b, "B")]
    assert [(i.image_id, i.label) for i in store.labelled_items(split="train")] == [(a, "Z"), (c, "C")]


def test_flt22_order_by_id_not_clock():
    """FLT-22: a clock that jumps backwards changes no ordering; the later event wins."""
    clock = _Clock()
    with LabelStore.in_memory(clock=clock) as store:
        image_id = _add(store, 1)
        store.record_label(image_id, "A", client_event_id="1")
        clock.now -= timedelta(hours=5)
        store.record_label(image_id, "B", client_event_id="2")
        assert store.current_label(image_id)["label"] == "B"
        assert [e["label"] for e in store.label_history()] == ["A", "B"]
        assert [i.label for i in store.labelled_items()] == ["B"]


# -- predictions and model versions ------------------------------------------------------------------


def _version(store: LabelStore, n: int, parent: int | None = None) -> int:
    return store.add_model_version(
        path=f"adapters/v{n}.safetensors", sha256=_sha(n), manifest={"method": "ila"}, metrics={"acc": 0.5 + n / 100},
        parent_id=parent, snapshot_event_id=0, job_id=None,
    )


def test_predictions_latest_per_version(store: LabelStore):
    """latest_prediction returns the newest row, optionally for one model version."""
    image_id = _add(store, 1)
    v1, v2 = _version(store, 1), _version(store, 2)
    store.add_predictions(v1, [(image_id, [("A", 0.9), ("B", 0.1)])])
    store.add_predictions(v2, [(image_id, [("B", 0.6), ("A", 0.4)])])
    assert store.latest_prediction(image_id)["topk"][0] == {"label": "B", "prob": 0.6}
    assert store.latest_prediction(image_id, v1)["model_version_id"] == v1
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        store.add_predictions(v1, [(image_id, [("A", float("nan"))])])


def test_activate_and_rollback(store: LabelStore):
    """One version is active; rollback re-activates the parent and both switches are recorded."""
    v1 = _version(store, 1)
    v2 = _version(store, 2, parent=v1)
    store.activate_version(v1, user="ana")
    store.activate_version(v2, user="ana")
    store.activate_version(v1, user="ben", reason="rollback")
    assert store.active_version()["id"] == v1
    assert store.model_version(v2)["status"] == "retired"
    history = [(e["version_id"], e["previous_version_id"], e["action"]) for e in store.version_history()]
    assert history == [(v1, None, "promote"), (v2, v1, "promote"), (v1, v2, "rollback")]
    with pytest.raises(ValueError, match="unknown activation reason"):
        store.activate_version(v2, reason="because")


# -- jobs ----------------------------------------------------------------------------------------


def test_flt20_enqueue_twice_is_job_busy(store: LabelStore):
    """FLT-20/CON-08: a second enqueue while one is queued or running raises JobBusy naming the job."""
    job_id = store.enqueue_job("train", {})
    with pytest.raises(JobBusy, match=f"a training job is already queued \\(job {job_id}\\)"):
        store.enqueue_job("train", {})
    store.claim_job("worker-1", 123)
    with pytest.raises(JobBusy, match=f"a training job is already running \\(job {job_id}\\)"):
        store.enqueue_job("train", {})


def test_flt20_one_live_job_is_a_database_rule(store: LabelStore):
    """FLT-20: even a raw INSERT cannot create a second queued job (partial unique index)."""
    store.enqueue_job("train", {})
    with pytest.raises(sqlite3.IntegrityError):
        store.db.execute(
            "INSERT INTO jobs (kind, status, snapshot_event_id, created_at) VALUES ('train', 'queued', 0, 'x')"
        )


def test_flt20_dead_pid_marked_lost(tmp_path: Path):
    """FLT-20: a running job whose worker pid is gone becomes failed 'lost: worker died'; a new job can start."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with LabelStore.open(tmp_path / "ila.db") as store:
        job_id = store.enqueue_job("train", {})
        store.claim_job("worker-1", child.pid)
        assert store.mark_lost_jobs() == [job_id]
        assert (store.job(job_id)["status"], store.job(job_id)["message"]) == ("failed", LOST_MESSAGE)
        assert not store.update_progress(job_id, step=1)
        assert not store.finish_job(job_id, "succeeded")
        assert store.enqueue_job("train", {}) > job_id


def test_flt19_stale_heartbeat_marked_lost():
    """FLT-19/20: a live pid with a heartbeat older than stale_after_s is marked lost; a fresh one is not."""
    clock = _Clock()
    with LabelStore.in_memory(clock=clock) as store:
        job_id = store.enqueue_job("train", {})
        store.claim_job("worker-1", 1)
        clock.now += timedelta(seconds=30)
        assert store.mark_lost_jobs(stale_after_s=60, alive=lambda pid: True) == []
        store.heartbeat(job_id)
        clock.now += timedelta(seconds=61)
        assert [j["id"] for j in store.stalled_jobs(stale_after_s=60)] == [job_id]
        assert store.mark_lost_jobs(stale_after_s=60, alive=lambda pid: True, stall_note="killed") == [job_id]
        assert store.job(job_id)["message"] == "stalled: no heartbeat for 61 s (limit 60 s); killed"
        assert store.stalled_jobs(stale_after_s=60) == []


def test_job_lifecycle(store: LabelStore):
    """Claim, progress, metrics, cancel request and finish update the job row as the UI reads it."""
    image_id = _add(store, 1)
    store.record_label(image_id, "A", client_event_id="1")
    job_id = store.enqueue_job("train", {"epochs": 2}, user="ana")
    assert store.job(job_id)["snapshot_event_id"] == store.last_event_id()
    claimed = store.claim_job("worker-1", 4242)
    assert claimed["status"] == "running" and store.claim_job("worker-2", 1) is None
    assert store.update_progress(job_id, epoch=1, step=3, total_steps=10, loss=float("nan"), lr=1e-3, eta_s=4.5)
    store.log_job_metrics(job_id, step=3, epoch=1, values={"loss": 0.7})
    store.request_cancel(job_id)
    assert store.cancel_requested(job_id)
    assert store.finish_job(job_id, "cancelled", message="stopped by ana")
    job = store.job(job_id)
    assert job["progress"]["step"] == 3 and job["progress"]["loss"] == "nan"
    assert job["status"] == "cancelled" and store.active_job() is None
    assert [m["values"] for m in store.job_metrics(job_id)] == [{"loss": 0.7}]
    with pytest.raises(ValueError, match="unknown final job status"):
        store.finish_job(job_id, "done")


def test_cancel_queued_job_is_immediate(store: LabelStore):
    """Cancelling a job nobody claimed yet cancels it at once."""
    job_id = store.enqueue_job("train", {})
    store.request_cancel(job_id)
    assert store.job(job_id)["status"] == "cancelled"
    assert store.claim_job("worker-1", 1) is None


def test_model_version_kind_and_note(tmp_path):
    """Versions record how they were made (probe / ila / baseline) and why a kept one is not served."""
    with LabelStore.open(tmp_path / "ila.db") as store:
        vid = store.add_model_version(path="adapters/a.safetensors", sha256="0" * 64, manifest={}, metrics={},
                                      parent_id=None, snapshot_event_id=0, job_id=None, kind="probe")  # fmt: skip
        default = store.add_model_version(path="adapters/b.safetensors", sha256="1" * 64, manifest={}, metrics={},
                                          parent_id=None, snapshot_event_id=0, job_id=None)  # fmt: skip
        assert store.model_version(vid)["kind"] == "probe" and store.model_version(default)["kind"] == "ila"
        store.set_version_note(default, "kept: holdout top-1 0.40 below the probe's 0.85")
        assert store.model_version(default)["note"].startswith("kept:")
        with pytest.raises(ValueError, match="kind"):
            store.add_model_version(path="adapters/c.safetensors", sha256="2" * 64, manifest={}, metrics={},
                                    parent_id=None, snapshot_event_id=0, job_id=None, kind="magic")  # fmt: skip
