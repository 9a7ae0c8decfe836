"""Serving: version swaps under load never mix versions; bad checkpoints never go live (CON-06/07, FLT-13/14)."""

from __future__ import annotations

import json
import logging
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from ila_core.adapters import ILAConfig
from ila_core.checkpoint import CheckpointError, build_reproducible
from ila_core.config import BackboneConfig
from ila_core.store import LabelStore
from ila_core.serving.predictor import NoActiveModel, Predictor
from ila_core.training.toydata import toy_image
from ila_core.serving.paths import checkpoint_path
from ila_core.serving.versions import promote, publish_version, rollback

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = BackboneConfig(name="test_vit", image_size=96, weights="none")
CLASSES = ["a", "b", "c"]




def _publish(store, data_dir, seed: int, *, nan: bool = False, top1: float = 0.5) -> int:
    built = build_reproducible(TINY, ILAConfig(ds_locations=(1, 3)), 3)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in built.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g))
    version_id, info = publish_version(store, data_dir, built, class_names=CLASSES, metrics={"top1": top1},
                                       snapshot_event_id=0)  # fmt: skip
    if nan:  # written after validation, as if damaged later; the manifest hash is fixed up to match
        from safetensors.torch import load_file, save_file

        state = load_file(str(info.path))
        state["head.weight"][0, 0] = float("nan")
        save_file(state, str(info.path))
        _fix_hash(store, info.path, version_id)
    return version_id


def _fix_hash(store, path, version_id):
    import hashlib

    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    mpath = path.with_suffix(".json")
    manifest = json.loads(mpath.read_text())
    manifest["tensors"]["sha256"] = sha
    mpath.write_text(json.dumps(manifest))
    store.db.execute("UPDATE model_versions SET sha256 = ? WHERE id = ?", [sha, version_id])
    store.db.conn.commit()


@pytest.fixture
def store(tmp_path):
    with LabelStore.open(tmp_path / "ila.db") as s:
        yield s


@pytest.fixture
def images():
    return [toy_image(k % 3, 100 + k, size=64) for k in range(4)]


def test_no_model_yet(tmp_path, store, images):
    """Before any version is active, predict raises NoActiveModel with a clear message."""
    predictor = Predictor.from_store(tmp_path, store)
    with pytest.raises(NoActiveModel, match="no trained model"):
        predictor.predict(images)


def test_predict_returns_sorted_top_k(tmp_path, store, images):
    """Top-k answers are (class, probability) pairs, best first, from the active version."""
    v = _publish(store, tmp_path, 1)
    store.activate_version(v)
    predictor = Predictor.from_store(tmp_path, store)
    answers = predictor.predict(images, k=2)
    assert len(answers) == 4 and all(len(a) == 2 for a in answers)
    for a in answers:
        assert a[0][1] >= a[1][1] and {c for c, _ in a} <= set(CLASSES)
    assert predictor.predict_versioned(images[:1])[0] == v


def test_served_model_runs_fused_adapters_with_the_checkpoint_logits(tmp_path, store, images):
    """Serving folds the adapters' BatchNorms (FusedILAdapter) and answers as the unfused checkpoint does."""
    from ila_core.adapters import FusedILAdapter, ILAdapter
    from ila_core.checkpoint import load_built

    v = _publish(store, tmp_path, 3)
    store.activate_version(v)
    predictor = Predictor.from_store(tmp_path, store)
    served = predictor.current
    modules = list(served.built.model.modules())
    assert sum(isinstance(m, FusedILAdapter) for m in modules) == 2
    assert not any(isinstance(m, ILAdapter) for m in modules)
    reference, _ = load_built(checkpoint_path(tmp_path, store.model_version(v)), tmp_path)
    batch = torch.stack([served.transform(im.convert("RGB")) for im in images])
    with torch.no_grad():
        torch.testing.assert_close(served.built.model(batch), reference.model.eval()(batch), rtol=1e-4, atol=1e-5)


def _hammer(predictor, images, golden, n: int, switch) -> list:
    """n concurrent predictions while ``switch`` runs; returns the answers that matched neither golden."""
    stop = threading.Event()
    switcher = threading.Thread(target=lambda: switch(stop))
    switcher.start()
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda _: predictor.predict(images, k=3), range(n)))
    finally:
        stop.set()
        switcher.join()
    return [a for a in answers if a not in golden]


def _golden(tmp_path, store, ids, images):
    out = []
    for vid in ids:
        p = Predictor(tmp_path)
        p.activate(store.model_version(vid))
        out.append(p.predict(images, k=3))
    assert out[0] != out[1]
    return out


def test_swaps_under_load_never_mix_versions(tmp_path, store, images):
    """200 concurrent predictions while A and B are activated back and forth: each equals A's or B's (CON-06)."""
    a, b = _publish(store, tmp_path, 1), _publish(store, tmp_path, 2)
    golden = _golden(tmp_path, store, (a, b), images)
    store.activate_version(a)
    predictor = Predictor.from_store(tmp_path, store)
    swaps = []

    def switch(stop):
        with LabelStore.open(tmp_path / "ila.db", quick_check=False) as s:  # one connection per thread
            while not stop.is_set():
                target = b if predictor.version_id == a else a
                promote(s, target, predictor=predictor, user="test")
                swaps.append(target)

    assert _hammer(predictor, images, golden, 200, switch) == []
    assert len(swaps) >= 1


def test_rollback_under_load_never_mixes_versions(tmp_path, store, images):
    """Rollbacks B->A during load: every answer equals A's or B's, and each rollback is an event (CON-07)."""
    a, b = _publish(store, tmp_path, 1), _publish(store, tmp_path, 2)
    golden = _golden(tmp_path, store, (a, b), images)
    store.activate_version(a)
    predictor = Predictor.from_store(tmp_path, store)
    rollbacks = []

    def switch(stop):
        with LabelStore.open(tmp_path / "ila.db", quick_check=False) as s:
            while not stop.is_set():
                promote(s, b, predictor=predictor)
                rollbacks.append(rollback(s, predictor=predictor, user="test"))

    assert _hammer(predictor, images, golden, 200, switch) == []
    assert rollbacks and set(rollbacks) == {a}
    assert sum(e["action"] == "rollback" for e in store.version_history()) == len(rollbacks)


@pytest.mark.parametrize("damage", ["truncated", "zero-bytes", "random-bytes", "pickle"])
def test_corrupt_active_checkpoint_falls_back_to_last_good(tmp_path, store, images, caplog, damage):
    """A corrupt active adapter at start-up: the last good version is served and the error logged (FLT-13)."""
    good, bad = _publish(store, tmp_path, 1), _publish(store, tmp_path, 2)
    store.activate_version(good)
    store.activate_version(bad)
    path = checkpoint_path(tmp_path, store.model_version(bad))
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 3], "zero-bytes": b"", "random-bytes": bytes(range(256)) * 8,
                      "pickle": pickle.dumps({"x": 1})}[damage])  # fmt: skip
    with caplog.at_level(logging.ERROR):
        predictor = Predictor.from_store(tmp_path, store)
    assert predictor.version_id == good and predictor.predict(images)
    assert f"version {bad}" in predictor.problem and any("cannot serve" in r.message for r in caplog.records)


def test_nan_version_is_never_activated(tmp_path, store, images):
    """A version whose tensors hold NaN is rejected at validation; serving and the store are unchanged (FLT-14)."""
    good, bad = _publish(store, tmp_path, 1), _publish(store, tmp_path, 2, nan=True)
    store.activate_version(good)
    predictor = Predictor.from_store(tmp_path, store)
    before = predictor.predict(images)
    with pytest.raises(CheckpointError, match="non-finite"):
        promote(store, bad, predictor=predictor)
    assert predictor.version_id == good and store.active_version()["id"] == good
    assert predictor.predict(images) == before


def test_sync_follows_the_store(tmp_path, store, images):
    """sync() picks up a version promoted elsewhere (e.g. by the worker) and keeps the old one for rollback."""
    a, b = _publish(store, tmp_path, 1), _publish(store, tmp_path, 2)
    store.activate_version(a)
    predictor = Predictor.from_store(tmp_path, store)
    assert not predictor.sync(store)
    store.activate_version(b)
    assert predictor.sync(store) and predictor.version_id == b and predictor.previous.version_id == a


def test_canary_rejects_a_bad_model(tmp_path, store, images, monkeypatch):
    """A model whose canary batch gives non-finite logits is not swapped in."""
    a, b = _publish(store, tmp_path, 1), _publish(store, tmp_path, 2)
    store.activate_version(a)
    predictor = Predictor.from_store(tmp_path, store, canary=images[:2])
    real = Predictor._logits

    def poisoned(self, served, imgs):
        out = real(self, served, imgs)
        return out * float("nan") if served.version_id == b else out

    monkeypatch.setattr(Predictor, "_logits", poisoned)
    with pytest.raises(CheckpointError, match="canary"):
        predictor.activate(store.model_version(b))
    assert predictor.version_id == a
