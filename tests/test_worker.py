"""Training jobs and the worker: progress, snapshot, cancellation, failures, crashes, watchdog, versions."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ila_core.checkpoint import load_model
from ila_core.config import BackboneConfig
from ila_core.store import LOST_MESSAGE, JobBusy, LabelStore, pid_alive
from ila_core.training import fit as fit_module
from ila_core.training.toydata import add_toy_images, write_toy_store
from ila_core.serving.paths import checkpoint_path
from ila_core.serving.promotion import Rival, decide
from ila_core.serving.versions import promote, rollback
from ila_core.jobs.worker import Worker, enqueue_training, job_params, run_training

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
TINY = BackboneConfig(name="test_vit", image_size=96, weights="none")




@pytest.fixture
def data_dir(tmp_path):
    write_toy_store(tmp_path, num_classes=3, train_per_class=8, holdout_per_class=2)
    return tmp_path


def _enqueue(data_dir: Path, **train) -> int:
    train = {"epochs": 2, "batch_size": 8, "warmup_steps": 2, **train}
    method = train.pop("method_overrides", {"ds_locations": (1, 3)})
    probe = train.pop("probe", False)  # these tests are about the trained stage; the probe stage has its own below
    start = train.pop("publish_start", False)  # likewise the step-0 version (tests/test_retrain_flow.py)
    variant = train.pop("variant", "ila")
    with LabelStore.open(data_dir / "ila.db") as store:
        return enqueue_training(store, variant=variant, backbone=TINY, method_overrides=method, probe=probe,
                                publish_start=start, **train)  # fmt: skip


def _job(data_dir: Path, job_id: int) -> dict:
    with LabelStore.open(data_dir / "ila.db") as store:
        return store.job(job_id)


def _active(data_dir: Path) -> dict | None:
    with LabelStore.open(data_dir / "ila.db") as store:
        return store.active_version()


def test_job_trains_publishes_and_promotes(data_dir):
    """A queued job ends 'succeeded' with per-epoch metric rows, progress, a loadable active version."""
    job_id = _enqueue(data_dir)
    outcome = Worker(data_dir, progress_interval_s=0).run_once()
    assert outcome.status == "succeeded" and outcome.promoted
    job = _job(data_dir, job_id)
    assert job["status"] == "succeeded" and job["result_version_id"] == outcome.version_id
    assert {"epoch", "step", "total_steps", "loss", "lr", "eta_s"} <= set(job["progress"])
    with LabelStore.open(data_dir / "ila.db") as store:
        rows = store.job_metrics(job_id)
        version = store.active_version()
    assert [r["epoch"] for r in rows] == [1, 2, 2] and rows[-1]["values"]["phase"] == "holdout"
    assert version["id"] == outcome.version_id and version["metrics"]["top1"] == outcome.metrics["top1"]
    model, manifest = load_model(checkpoint_path(data_dir, version), data_dir)
    assert manifest["class_names"] == ["cultivar-0", "cultivar-1", "cultivar-2"]
    assert manifest["train_config"]["seed"] == 1 and manifest["extra"]["job_id"] == job_id


def test_second_enqueue_is_refused(data_dir):
    """Two 'start training' clicks give one job; the other gets JobBusy (CON-08)."""
    results: list = []

    def click():
        try:
            results.append(_enqueue(data_dir))
        except JobBusy as exc:
            results.append(exc)

    threads = [threading.Thread(target=click) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, int) for r in results) == 1
    assert any(isinstance(r, JobBusy) and "already" in str(r) for r in results)


def test_job_trains_on_its_snapshot(data_dir):
    """Labels added after the job was queued are not in its training set (CON-09)."""
    _enqueue(data_dir)
    with LabelStore.open(data_dir / "ila.db") as store:
        add_toy_images(store, data_dir, 3, range(4), split="train")
    outcome = Worker(data_dir).run_once()
    version = _active(data_dir)
    assert outcome.status == "succeeded"
    assert version["manifest"]["class_names"] == ["cultivar-0", "cultivar-1", "cultivar-2"]


def test_stop_event_cancels_between_batches(data_dir):
    """Setting the stop event mid-epoch ends the job 'cancelled' with nothing published."""
    job_id = _enqueue(data_dir, epochs=50)
    stop = threading.Event()

    def on_event(event):
        if event["kind"] == "progress" and event.get("phase") == "train":
            stop.set()

    worker = Worker(data_dir)
    job = worker.claim()
    outcome = run_training(job, data_dir / "ila.db", data_dir, stop, on_event)
    assert outcome.status == "cancelled" and _job(data_dir, job_id)["status"] == "cancelled"
    assert _active(data_dir) is None and not list((data_dir / "adapters").glob("*.safetensors"))


def test_cancel_request_is_honoured(data_dir):
    """request_cancel on a running job stops it at the next check."""
    job_id = _enqueue(data_dir, epochs=50)

    def on_event(event):
        if event["kind"] == "epoch":
            with LabelStore.open(data_dir / "ila.db") as store:
                store.request_cancel(job_id)

    worker = Worker(data_dir, on_event=on_event, progress_interval_s=0)
    outcome = worker.run_once()
    assert outcome.status == "cancelled" and "cancelled" in outcome.message
    assert _job(data_dir, job_id)["cancel_requested"] == 1


def test_error_in_epoch_one_fails_the_job(data_dir, monkeypatch):
    """A ValueError raised in epoch 1 ends the job 'failed' with the message; the caller keeps running (FLT-18)."""
    def boom(*args, **kwargs):
        raise ValueError("synthetic failure in epoch 1")

    monkeypatch.setattr(fit_module, "train_one_epoch", boom)
    job_id = _enqueue(data_dir)
    outcome = Worker(data_dir).run_once()
    job = _job(data_dir, job_id)
    assert outcome.status == "failed" and job["status"] == "failed"
    assert job["message"] == "ValueError: synthetic failure in epoch 1"
    assert _active(data_dir) is None


def test_nan_loss_fails_the_job(data_dir):
    """A diverging run (huge lr -> non-finite loss) fails with a clear message, nothing published."""
    # a random head: with the LP-FT head the toy cultivars can sit at zero loss, which a huge step keeps finite
    job_id = _enqueue(data_dir, lr=1e30, warmup_steps=0, clip_grad=None, lp_init=False)
    outcome = Worker(data_dir).run_once()
    assert outcome.status == "failed" and "loss is" in _job(data_dir, job_id)["message"]


def test_startup_marks_orphaned_running_jobs_failed(data_dir):
    """A job left 'running' by a previous process (our pid reused, or a dead pid) is failed at start (FLT-20)."""
    first = _enqueue(data_dir)
    with LabelStore.open(data_dir / "ila.db") as store:
        store.claim_job("old-app", os.getpid())
    (data_dir / "adapters").mkdir()
    stray = data_dir / "adapters" / ".v9.safetensors.x.tmp"
    stray.write_bytes(b"half")
    assert Worker(data_dir).startup_sweep() == [first]
    assert _job(data_dir, first)["message"] == LOST_MESSAGE and not stray.exists()
    second = _enqueue(data_dir)  # a new job can start
    with LabelStore.open(data_dir / "ila.db") as store:
        store.claim_job("dead", 2**22 + 12345)
    assert Worker(data_dir).startup_sweep() == [second]


def test_watchdog_fails_a_hung_job_and_a_new_job_runs(data_dir, monkeypatch):
    """No heartbeat for T: the job is marked failed, its late result is discarded, the next job runs (FLT-19)."""
    release, hung = threading.Event(), threading.Event()
    real = fit_module.train_one_epoch

    def maybe_hang(*args, **kwargs):
        if not hung.is_set():
            hung.set()
            release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(fit_module, "train_one_epoch", maybe_hang)
    first = _enqueue(data_dir)
    worker = Worker(data_dir, poll_s=0.1, stale_after_s=1.0)
    worker.start()
    try:
        deadline = time.time() + 30
        while _job(data_dir, first)["status"] == "running" or not hung.is_set():
            assert time.time() < deadline, "watchdog never fired"
            time.sleep(0.1)
        assert _job(data_dir, first)["status"] == "failed"
        second = _enqueue(data_dir)
        while _job(data_dir, second)["status"] in ("queued", "running"):
            assert time.time() < deadline + 30, "second job never finished"
            time.sleep(0.1)
        assert _job(data_dir, second)["status"] == "succeeded"
    finally:
        release.set()
        worker.stop()
    assert _job(data_dir, first)["status"] == "failed"
    assert _active(data_dir)["job_id"] == second  # the hung job published nothing when it woke up


def test_promotion_rule():
    """Serve only when top-1 and macro-F1 are at least every rival's on the same holdout; the first is served."""
    probe = Rival("the probe (version 1)", {"top1": 0.85, "macro_f1": 0.84})
    assert decide({"top1": 0.1}, [], has_active=False).promote
    assert decide({"top1": 0.85, "macro_f1": 0.84}, [probe], has_active=True).promote
    worse = decide({"top1": 0.17, "macro_f1": 0.05}, [probe], has_active=True)  # chance level
    assert not worse.promote and "0.170" in worse.reason and "the probe (version 1)" in worse.reason
    f1_drop = decide({"top1": 0.90, "macro_f1": 0.70}, [probe], has_active=True)
    assert not f1_drop.promote and "macro-F1" in f1_drop.reason
    assert not decide({}, [probe], has_active=True).promote  # no holdout: nothing to compare on
    unknown = Rival("the served version 3", None, "version 3 does not know cultivar 'X'")
    assert decide({"top1": 0.5, "macro_f1": 0.5}, [unknown], has_active=True).promote

def test_promote_and_rollback_any_version(data_dir):
    """Explicit promote and rollback switch the active version and are recorded as events."""
    ids = []
    for _ in range(2):
        _enqueue(data_dir, epochs=1)
        ids.append(Worker(data_dir).run_once().version_id)
    with LabelStore.open(data_dir / "ila.db") as store:
        assert store.active_version()["id"] == ids[1]
        assert rollback(store, user="admin", data_dir=data_dir) == ids[0]
        assert store.active_version()["id"] == ids[0]
        promote(store, ids[1], user="admin", data_dir=data_dir)
        assert [e["action"] for e in store.version_history()][-2:] == ["rollback", "promote"]


def test_job_params_are_validated_when_queued():
    """Bad parameters are refused at enqueue time, not later in the worker."""
    with pytest.raises(ValueError):
        job_params(variant="nope", backbone=TINY)
    with pytest.raises(ValueError):
        job_params(backbone=TINY, epochs=0)


# -- crash tests with real processes ---------------------------------------------------------------

_CHILD_ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
              "CUDA_VISIBLE_DEVICES": ""}  # children take the CPU path, as in CI, also on a GPU machine
_WORKER = "from ila_core.jobs.worker import worker_main; import sys; sys.exit(worker_main(sys.argv[1], once=True))"


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_kill_9_mid_training_keeps_the_active_model(data_dir):
    """kill -9 of a worker process while it trains: active model unchanged, job failed on next start (FLT-01)."""
    _enqueue(data_dir, epochs=1)
    Worker(data_dir).run_once()
    before = _active(data_dir)
    before_bytes = checkpoint_path(data_dir, before).read_bytes()
    for _ in range(int(os.environ.get("ILA_CRASH_ROUNDS", "1"))):
        job_id = _enqueue(data_dir, epochs=500)
        proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(data_dir)], env=_CHILD_ENV)
        try:
            _wait_for(lambda: _job(data_dir, job_id)["progress"].get("phase") == "train", 90, "training to start")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert Worker(data_dir).startup_sweep() == [job_id]
        assert _job(data_dir, job_id)["message"] == LOST_MESSAGE
        after = _active(data_dir)
        assert after["id"] == before["id"] and checkpoint_path(data_dir, after).read_bytes() == before_bytes
        load_model(checkpoint_path(data_dir, after), data_dir)
        assert not list((data_dir / "adapters").glob("*.tmp"))


def test_file_too_large_fails_the_job_and_keeps_the_previous_adapter(data_dir):
    """RLIMIT_FSIZE below the adapter size in the trainer: job 'failed: File too large', old adapter active (FLT-06)."""
    big = {"ds_locations": (1, 3), "bottleneck_dim": 256}  # a ~1.4 MB checkpoint
    _enqueue(data_dir, epochs=1)
    Worker(data_dir).run_once()
    before = _active(data_dir)
    job_id = _enqueue(data_dir, epochs=1, method_overrides=big)
    limit = 1 << 20

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-c", _WORKER, str(data_dir)], env=_CHILD_ENV, preexec_fn=cap,
                          timeout=120, capture_output=True, text=True)  # fmt: skip
    job = _job(data_dir, job_id)
    assert job["status"] == "failed" and "File too large" in job["message"], proc.stderr[-2000:]
    assert _active(data_dir)["id"] == before["id"]
    assert not list((data_dir / "adapters").glob("*.tmp"))
    assert len(list((data_dir / "adapters").glob("*.safetensors"))) == 1


@pytest.mark.slow  # a spawned child imports torch: ~15 s on 2 shared cores
def test_process_mode_runs_jobs_in_a_child(data_dir):
    """mode='process' trains in a spawned child process and the result reaches the store."""
    job_id = _enqueue(data_dir, epochs=1)
    worker = Worker(data_dir, mode="process", poll_s=0.2)
    worker.start()
    try:
        _wait_for(lambda: _job(data_dir, job_id)["status"] not in ("queued", "running"), 120, "the child's job")
    finally:
        worker.stop()
    job = _job(data_dir, job_id)
    assert job["status"] == "succeeded" and job["pid"] != os.getpid()


def test_watchdog_kills_a_stalled_child_process(data_dir):
    """Process mode: a frozen child (SIGSTOP, no more heartbeats) is killed by pid and its job failed as stalled;
    the active model is unchanged and a half-written checkpoint temp it left is swept (FLT-19, FLT-02)."""
    _enqueue(data_dir, epochs=1)
    Worker(data_dir).run_once()
    before = _active(data_dir)
    before_bytes = checkpoint_path(data_dir, before).read_bytes()
    job_id = _enqueue(data_dir, epochs=500)
    worker = Worker(data_dir, mode="process", poll_s=0.2, stale_after_s=3.0)
    worker.start()
    pid = None
    try:
        _wait_for(lambda: _job(data_dir, job_id)["progress"].get("phase") == "train", 60, "the child to train")
        pid = _job(data_dir, job_id)["pid"]
        assert pid != os.getpid() and pid == worker._child.pid
        os.kill(pid, signal.SIGSTOP)  # frozen mid-training: alive, but it never beats again
        stray = data_dir / "adapters" / f".v{before['id'] + 1}.safetensors.frozen.tmp"  # as if frozen mid-publish
        stray.write_bytes(b"half")
        _wait_for(lambda: _job(data_dir, job_id)["status"] != "running", 30, "the watchdog")
        _wait_for(lambda: not pid_alive(pid), 10, "the stalled child to be killed and reaped")
        _wait_for(lambda: not stray.exists(), 10, "the temp-file sweep")
    finally:
        if pid is not None and pid_alive(pid):  # never leave a frozen process behind, even when the test fails
            os.kill(pid, signal.SIGKILL)
        worker.stop(timeout=5)
    job = _job(data_dir, job_id)
    assert job["status"] == "failed" and job["message"].startswith("stalled: no heartbeat"), job["message"]
    assert "killed" in job["message"]
    after = _active(data_dir)
    assert after["id"] == before["id"] and checkpoint_path(data_dir, after).read_bytes() == before_bytes
    assert not list((data_dir / "adapters").glob("*.tmp"))
    assert len(list((data_dir / "adapters").glob("*.safetensors"))) == 1


def test_a_finished_job_thread_is_not_called_stuck(data_dir, caplog):
    """While a succeeded job's thread winds down, the loop waits quietly instead of logging it as abandoned."""
    _enqueue(data_dir, epochs=1)

    def slow_callbacks(event):  # e.g. the app building the promoted model after the job row is final
        if event["kind"] == "finished":
            time.sleep(0.5)

    worker = Worker(data_dir, poll_s=0.02, progress_interval_s=0, on_event=slow_callbacks)
    with caplog.at_level("WARNING", logger="ila_core.jobs.worker"):
        worker.start()
        try:
            _wait_for(lambda: worker.last_outcome is not None, 120, "the job to finish")
            time.sleep(0.3)  # several polls after the job ended
        finally:
            worker.stop(timeout=30)
    assert worker.last_outcome.status == "succeeded"
    assert "abandoning" not in caplog.text


def test_rollback_walks_back_the_promotion_history():
    """Promote 1, 2, 3; roll back twice: 3 -> 2 -> 1, never back to 3 (it used to flip between the last two)."""
    from ila_core.serving.versions import promotion_stack

    def ev(vid, action):
        return {"version_id": vid, "action": action}

    history = [ev(1, "promote"), ev(2, "promote"), ev(3, "promote")]
    assert promotion_stack(history) == [1, 2, 3]
    history.append(ev(2, "rollback"))
    assert promotion_stack(history) == [1, 2]
    history.append(ev(1, "rollback"))
    assert promotion_stack(history) == [1]
    history += [ev(3, "promote"), ev(1, "rollback")]  # re-promoting 3 and rolling back returns to 1
    assert promotion_stack(history) == [1]


def test_rollback_twice_goes_two_promotions_back(tmp_path):
    """Through the store: the second rollback reaches the first version."""
    with LabelStore.open(tmp_path / "ila.db") as store:
        ids = [store.add_model_version(path=f"adapters/{i}.safetensors", sha256=f"{i}" * 64, manifest={}, metrics={},
                                       parent_id=None, snapshot_event_id=0, job_id=None) for i in range(1, 4)]  # fmt: skip
        for vid in ids:
            promote(store, vid, user="admin")
        assert rollback(store, user="admin") == ids[1]
        assert rollback(store, user="admin") == ids[0]
        with pytest.raises(ValueError, match="no earlier model version"):
            rollback(store, user="admin")
