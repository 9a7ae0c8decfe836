"""LabelStore under faults and concurrency: CON-01/03/05/12 and FLT-04/05/08/11 from RELIABILITY.md.

Every test uses its own database file under ``tmp_path`` (the Hypothesis machine makes its own
temporary directory per example) and bounded waits, so the file runs in well under a minute.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from ila_core.store import JobBusy, LabelStore, NothingToUndo, StoreBusy, StoreCorrupt, StoreFull, WrongThread
from sqlite_utils.utils import sqlite3

ROOT = Path(__file__).resolve().parents[1]


def _sha(n: int) -> str:
    return f"{n:064x}"


def _seed_images(store: LabelStore, count: int) -> list[int]:
    return [
        store.add_image(sha256=_sha(n), rel_path=f"images/{n}.jpg", width=8, height=8, fmt="JPEG")[0]
        for n in range(count)
    ]


def _run_threads(targets: list) -> list[BaseException]:
    """Run callables in threads; return the exceptions they raised."""
    errors: list[BaseException] = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # collected and asserted on by the caller
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(fn)) for fn in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    return errors


# -- concurrency ---------------------------------------------------------------------------------


def test_con01_corrections_from_two_threads(tmp_path: Path):
    """CON-01: two threads, each with its own LabelStore.open(path), save every correction."""
    path = tmp_path / "ila.db"
    with LabelStore.open(path) as store:
        images = _seed_images(store, 4)

    def worker(name: str):
        def run():
            with LabelStore.open(path, quick_check=False) as own:
                for i in range(20):
                    own.record_label(images[i % 4], f"C{i % 3}", client_event_id=f"{name}-{i}", user=name)

        return run

    assert _run_threads([worker("ana"), worker("ben")]) == []
    with LabelStore.open(path) as store:
        assert len(store.label_history()) == 40
        assert store.replay_current_labels() == store.derived_current_labels()


def test_con01_shared_store_across_threads_fails_loudly(tmp_path: Path):
    """CON-01 regression: a store opened in one thread and used in another raises WrongThread, saves nothing."""
    with LabelStore.open(tmp_path / "ila.db") as store:
        image_id = _seed_images(store, 1)[0]
        errors = _run_threads([lambda: store.record_label(image_id, "A", client_event_id="x")])
        assert len(errors) == 1 and isinstance(errors[0], WrongThread)
        assert store.label_history() == []


def test_con03_simultaneous_corrections_same_image(tmp_path: Path):
    """CON-03: two users correct one image at once: both stored, current = later commit, it reports the conflict."""
    path = tmp_path / "ila.db"
    with LabelStore.open(path) as store:
        image_id = _seed_images(store, 1)[0]
        store.record_label(image_id, "A", client_event_id="seed")
    barrier = threading.Barrier(2)
    results = {}

    def user(name: str, label: str):
        def run():
            with LabelStore.open(path, quick_check=False) as own:
                barrier.wait(timeout=10)
                results[name] = own.record_label(image_id, label, client_event_id=name, expected_current="A")

        return run

    assert _run_threads([user("ana", "B"), user("ben", "C")]) == []
    first, later = sorted(results.values(), key=lambda r: r.event_id)
    assert (first.conflict, later.conflict) == (False, True)
    assert later.previous == first.current
    with LabelStore.open(path) as store:
        assert store.current_label(image_id)["id"] == later.event_id
        assert len(store.label_history(image_id)) == 3


def test_con05_deferred_transaction_fails_instantly(tmp_path: Path):
    """CON-05 regression: db.atomic() (deferred BEGIN) read-then-write fails at once, ignoring busy_timeout."""
    path = tmp_path / "ila.db"
    with LabelStore.open(path) as store, LabelStore.open(path, quick_check=False) as other:
        image_id = _seed_images(store, 1)[0]
        with store.db.atomic():
            store.db.execute("SELECT COUNT(*) FROM label_events").fetchone()  # read snapshot taken
            other.record_label(image_id, "B", client_event_id="other")  # makes the snapshot stale
            start = time.monotonic()
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                store.db.execute("INSERT INTO cultivars (name, created_at) VALUES ('X', 'now')")
            assert time.monotonic() - start < 1.0  # 5 s busy_timeout was not honoured


def test_con05_immediate_waits_and_reads_fresh_state(tmp_path: Path):
    """CON-05: record_label takes the lock at BEGIN IMMEDIATE, waits out a writer, and compares with its commit."""
    path = tmp_path / "ila.db"
    with LabelStore.open(path) as store:
        image_id = _seed_images(store, 1)[0]
        store.record_label(image_id, "A", client_event_id="seed")
        locked = threading.Event()

        def other_writer():
            # Hold the write lock (an outer BEGIN IMMEDIATE) across a correction and a pause.
            with LabelStore.open(path, quick_check=False) as other, other._write():
                other.record_label(image_id, "Z", client_event_id="other")
                locked.set()
                time.sleep(0.3)

        thread = threading.Thread(target=other_writer)
        thread.start()
        assert locked.wait(timeout=10)
        result = store.record_label(image_id, "B", client_event_id="mine", expected_current="A")
        thread.join(timeout=10)
        assert result.created and result.conflict and result.previous == "Z"
        assert [e["client_event_id"] for e in store.label_history(image_id)] == ["seed", "other", "mine"]


# -- CON-12: stateful property test --------------------------------------------------------------------


class StoreMachine(RuleBasedStateMachine):
    """Correct / undo / double-submit / reopen / enqueue-job against a Python model of label stacks."""

    def __init__(self, base: Path) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="example-", dir=base))
        self.path = self.dir / "ila.db"
        self.store = LabelStore.open(self.path)
        self.images = _seed_images(self.store, 3)
        self.model: dict[int, list[str]] = {i: [] for i in self.images}
        self.events: dict[str, int] = {}  # client id -> event id, everything acknowledged so far
        self.submits: list[tuple[str, int, str]] = []
        self.snapshots: list[int] = []
        self.counter = 0

    def _cid(self) -> str:
        self.counter += 1
        return f"c{self.counter}"

    @rule(edits=st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["A", "B", "C"])), min_size=1, max_size=4))
    def correct(self, edits: list[tuple[int, str]]) -> None:
        # A few corrections per step, so label steps are not outnumbered by reopen/job steps.
        for index, label in edits:
            image_id, cid = self.images[index], self._cid()
            result = self.store.record_label(image_id, label, client_event_id=cid)
            assert result.created and result.event_id > max(self.events.values(), default=0)
            self.model[image_id].append(label)
            self.events[cid] = result.event_id
            self.submits.append((cid, image_id, label))

    @rule(index=st.integers(0, 2))
    def undo(self, index: int) -> None:
        image_id, cid = self.images[index], self._cid()
        stack = self.model[image_id]
        if not stack:
            with pytest.raises(NothingToUndo):
                self.store.undo(image_id, client_event_id=cid)
            return
        result = self.store.undo(image_id, client_event_id=cid)
        stack.pop()
        assert result.current == (stack[-1] if stack else None)
        self.events[cid] = result.event_id

    @precondition(lambda self: self.submits)
    @rule(data=st.data())
    def double_submit(self, data) -> None:
        cid, image_id, label = data.draw(st.sampled_from(self.submits))
        result = self.store.record_label(image_id, label, client_event_id=cid)
        assert not result.created and result.event_id == self.events[cid]

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = LabelStore.open(self.path)

    @rule()
    def enqueue_job(self) -> None:
        job_id = self.store.enqueue_job("train", {})
        with pytest.raises(JobBusy):
            self.store.enqueue_job("train", {})
        self.snapshots.append(self.store.job(job_id)["snapshot_event_id"])
        assert self.snapshots[-1] == self.store.last_event_id()
        self.store.finish_job(job_id, "succeeded")

    @invariant()
    def events_never_disappear_and_ids_increase(self) -> None:
        stored = [(e["client_event_id"], e["id"]) for e in self.store.label_history()]
        ids = [event_id for _, event_id in stored]
        assert ids == sorted(set(ids))
        assert dict(stored) == self.events

    @invariant()
    def derived_equals_replay_and_model(self) -> None:
        assert self.store.derived_current_labels() == self.store.replay_current_labels()
        for image_id, stack in self.model.items():
            current = self.store.current_label(image_id)
            assert (current["label"] if current else None) == (stack[-1] if stack else None)

    @invariant()
    def snapshots_monotone(self) -> None:
        assert self.snapshots == sorted(self.snapshots)

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def test_con12_state_machine(tmp_path: Path):
    """CON-12: events never disappear, ids increase, derived == replay, job snapshots monotone."""
    run_state_machine_as_test(
        lambda: StoreMachine(tmp_path),
        settings=settings(
            max_examples=25,
            stateful_step_count=25,
            deadline=None,
            database=None,  # no .hypothesis/ directory in the repo: tests write only under tmp_path
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# -- faults ------------------------------------------------------------------------------------


_WRITER = textwrap.dedent(
    """
    import sys, types
    root, db_path, run = sys.argv[1], sys.argv[2], sys.argv[3]
    # 30 restarts must be cheap: load ila_core.store without ila_core/__init__ (which imports torch),
    # and hide pandas/numpy, which sqlite-utils imports only for optional column types.
    sys.modules["pandas"] = sys.modules["numpy"] = None
    pkg = types.ModuleType("ila_core")
    pkg.__path__ = [root + "/ila_core"]
    sys.modules["ila_core"] = pkg
    from ila_core.store import LabelStore, NothingToUndo
    store = LabelStore.open(db_path, quick_check=False)
    images = [row["id"] for row in store.images()]
    print("READY", flush=True)
    i = 0
    while True:
        cid = f"{run}-{i}"
        try:
            if i % 5 == 4:
                result = store.undo(images[i % len(images)], client_event_id=cid)
            else:
                result = store.record_label(images[i % len(images)], f"C{i % 3}", client_event_id=cid)
        except NothingToUndo:
            pass
        else:
            print(f"ACK {result.event_id} {cid}", flush=True)  # only after the commit returned
        i += 1
    """
)


def test_flt04_kill9_writer_loses_no_acknowledged_event(tmp_path: Path):
    """FLT-04: SIGKILL a writer process 30 times at random moments; every acknowledged event survives."""
    path = tmp_path / "ila.db"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    with LabelStore.open(path) as store:
        _seed_images(store, 3)
    rng = random.Random(4)
    acked: dict[str, int] = {}
    for run in range(30):
        child = subprocess.Popen(
            [sys.executable, str(script), str(ROOT), str(path), f"r{run}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert child.stdout.readline().strip() == "READY", child.stderr.read()
        time.sleep(rng.uniform(0.0, 0.12))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=10)
        for line in out.splitlines():
            if line.startswith("ACK ") and line.count(" ") == 2:  # a line cut by the kill is not an ack
                _, event_id, cid = line.split(" ")
                acked[cid] = int(event_id)
    assert len(acked) > 30  # the writer did get work done between kills
    with LabelStore.open(path) as store:
        assert store.integrity_check() == "ok"
        stored = {e["client_event_id"]: e["id"] for e in store.label_history()}
        assert {cid: stored.get(cid) for cid in acked} == acked
        assert store.derived_current_labels() == store.replay_current_labels()


def test_flt05_storage_full_then_retry(tmp_path: Path):
    """FLT-05: max_page_count at the current size -> StoreFull, no partial row; raising it lets the retry succeed."""
    with LabelStore.open(tmp_path / "ila.db") as store:
        image_id = _seed_images(store, 1)[0]
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count = {pages + 1}")
        saved = 0
        with pytest.raises(StoreFull, match="storage full, correction not saved"):
            for saved in range(1000):  # noqa: B007 - the loop ends in StoreFull once pages run out
                store.record_label(image_id, f"cultivar {saved}", client_event_id=f"c{saved}", note="n" * 1500)
        events = store.label_history()
        assert len(events) == saved and f"c{saved}" not in {e["client_event_id"] for e in events}
        assert store.cultivars() == [f"cultivar {n}" for n in range(saved)]  # the new cultivar row rolled back too
        assert store.derived_current_labels() == store.replay_current_labels()
        store.db.execute("PRAGMA max_page_count = 1000000")
        retry = store.record_label(image_id, f"cultivar {saved}", client_event_id=f"c{saved}", note="n" * 1500)
        assert retry.created and store.current_label(image_id)["client_event_id"] == f"c{saved}"


@pytest.fixture
def lock_holder(tmp_path: Path):
    """A second raw connection to an existing store, for holding BEGIN IMMEDIATE."""
    LabelStore.open(tmp_path / "ila.db").close()  # create the store first: sqlite3.connect would leave 0 bytes
    conn = sqlite3.connect(str(tmp_path / "ila.db"), isolation_level=None, check_same_thread=False)
    yield conn
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    conn.close()


def test_flt08_lock_longer_than_timeout_is_store_busy(tmp_path: Path, lock_holder):
    """FLT-08: a writer held past busy_timeout -> 'database busy, please retry' after the timeout, nothing written."""
    with LabelStore.open(tmp_path / "ila.db", busy_timeout_ms=300) as store:
        image_id = _seed_images(store, 1)[0]
        lock_holder.execute("BEGIN IMMEDIATE")
        start = time.monotonic()
        with pytest.raises(StoreBusy, match="database busy, please retry"):
            store.record_label(image_id, "A", client_event_id="c1")
        waited = time.monotonic() - start
        lock_holder.execute("ROLLBACK")
        assert 0.25 <= waited < 3.0
        assert store.label_history() == []


def test_flt08_lock_shorter_than_timeout_succeeds(tmp_path: Path, lock_holder):
    """FLT-08: a writer that releases within busy_timeout only delays the correction."""
    with LabelStore.open(tmp_path / "ila.db", busy_timeout_ms=2000) as store:
        image_id = _seed_images(store, 1)[0]
        lock_holder.execute("BEGIN IMMEDIATE")
        timer = threading.Timer(0.2, lambda: lock_holder.execute("ROLLBACK"))
        timer.start()
        result = store.record_label(image_id, "A", client_event_id="c1")
        timer.join()
        assert result.created and len(store.label_history()) == 1


def _flip(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    for k in range(4):
        out[offset + k] ^= 0xFF
    return bytes(out)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: _flip(b, 0), id="magic"),
        pytest.param(lambda b: _flip(b, 100), id="page1-btree-header"),
        pytest.param(lambda b: _flip(b, 4090), id="page1-schema-cells"),
        pytest.param(lambda b: b[: len(b) // 2], id="truncated-half"),
        pytest.param(lambda b: b[:1000], id="truncated-in-page1"),
        pytest.param(lambda b: b"", id="truncated-empty"),
    ],
)
def test_flt11_corrupt_file_refused_untouched(tmp_path: Path, damage):
    """FLT-11: a damaged file raises StoreCorrupt ('restore from backup') and is left byte-for-byte as it was."""
    path = tmp_path / "ila.db"
    with LabelStore.open(path) as store:
        for image_id in _seed_images(store, 40):
            store.record_label(image_id, "A", client_event_id=f"c{image_id}")
    path.write_bytes(damage(path.read_bytes()))
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(StoreCorrupt, match="restore from backup"):
        LabelStore.open(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(os.listdir(tmp_path)) == ["ila.db"]
