"""The Train tab's time estimate: the pace a job records, and the next job's time by part."""

from __future__ import annotations

import pytest

from ila_core.config import BackboneConfig
from ila_core.jobs.estimate import LONG_S, Pace, estimate_job, latest_pace
from ila_core.jobs.worker import Worker, enqueue_training
from ila_core.store import LabelStore
from ila_core.training.config import TrainConfig
from ila_core.training.toydata import write_toy_store

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = BackboneConfig(name="test_vit", image_size=96, weights="none")


def _version(pace: dict, *, name: str = "test_vit", size: int = 96, batch: int = 8, vid: int = 3) -> dict:
    return {"id": vid, "manifest": {"backbone": {"name": name, "image_size": size},
                                    "train_config": {"batch_size": batch, "hflip": True}, "extra": {"pace": pace}}}


PACE = {"train_images": 100, "holdout_images": 20, "steps": 120, "train_seconds": 60.0, "fill_views": 220,
        "fill_seconds": 22.0, "cache_held": 100, "entry_bytes": 1000, "capacity_bytes": 10**9}


def test_pace_is_read_from_the_newest_matching_version():
    other = _version(PACE, name="vit_base", vid=9)
    probe = {"id": 8, "manifest": {"backbone": {"name": "test_vit", "image_size": 96}, "extra": {}}}
    pace = latest_pace([other, probe, _version(PACE)], backbone="test_vit", image_size=96)
    assert (pace.version_id, pace.step_s, pace.view_s, pace.views) == (3, 0.5, 0.1, 2)
    assert latest_pace([probe], backbone="test_vit", image_size=96) is None
    assert latest_pace([_version(PACE)], backbone="test_vit", image_size=224) is None


def test_estimate_adds_the_new_views_the_steps_and_the_holdout():
    pace = Pace.from_version(_version(PACE))
    config = TrainConfig(steps=120, batch_size=8, minutes=None)
    est = estimate_job(1000, 200, config, pace)
    assert est.fill_views == 900 * 2 + 180 and est.fill_s == pytest.approx(198.0)
    assert est.train_s == pytest.approx(60.0) and est.eval_s == pytest.approx(2 * 200 * 0.5 / 8 / 3)
    assert not est.budget_cut and est.total_s == pytest.approx(198 + 60 + est.eval_s)
    assert est.text().startswith("**Next retrain ≈ 4 min** on this machine (1,000 training and 200 holdout")
    assert "GPU" not in est.text()
    same = estimate_job(100, 20, config, pace)  # nothing new: no fill, the measured steps
    assert same.fill_views == 0 and same.train_s == pytest.approx(60.0)
    # With the pace job's whole fit time recorded, the rest (head fit, evaluations) scales from its own.
    timed = Pace.from_version(_version(dict(PACE, fit_seconds=94.0)))  # 94 - 60 steps - 22 fill = 12 s
    assert timed.other_s == pytest.approx(12.0)
    assert estimate_job(1000, 200, config, timed).eval_s == pytest.approx(12.0 * 1200 / 120)


def test_crop_views_add_their_views_to_the_fill_even_for_images_already_cached():
    """Asking for crop views after a job without them costs the new views of every image, old ones too."""
    pace = Pace.from_version(_version(PACE))
    config = TrainConfig(steps=120, batch_size=8, minutes=None, crop_views=6)
    assert estimate_job(100, 20, config, pace).fill_views == 100 * 6
    assert estimate_job(1000, 200, config, pace).fill_views == 900 * 8 + 100 * 6 + 180


def test_a_budget_cut_or_a_long_job_points_at_a_gpu():
    pace = Pace.from_version(_version(PACE))
    cut = estimate_job(1000, 200, TrainConfig(steps=120, batch_size=8, minutes=0.5), pace)
    assert cut.budget_cut and cut.steps_in_budget == 60
    assert "stops training after about 60 of 120 steps" in cut.text() and "torchrun" in cut.text()
    big = estimate_job(30_000, 3_000, TrainConfig(steps=120, batch_size=8, minutes=None), pace)
    assert big.total_s > LONG_S and "--device cuda" in big.text()


def test_a_set_beyond_the_cache_costs_the_frozen_blocks_at_every_step():
    small_cache = dict(PACE, capacity_bytes=2 * 1000 * 500)  # room for 500 training images, both views
    pace = Pace.from_version(_version(small_cache))
    est = estimate_job(1000, 0, TrainConfig(steps=100, batch_size=8, minutes=None), pace)
    assert est.held == 500 and est.fill_views == 400 * 2
    assert est.train_s == pytest.approx(100 * (0.5 + 0.5 * 8 * 0.1))  # half of each batch through the prefix
    assert "holds 500 of 1,000 training images" in est.text()


def test_a_finished_job_records_its_pace_and_the_next_estimate_reads_it(tmp_path):
    """A real job writes extra.pace; with nothing added since, the estimate is its own fill-free steps."""
    write_toy_store(tmp_path, num_classes=3, train_per_class=8, holdout_per_class=2)
    with LabelStore.open(tmp_path / "ila.db") as store:
        enqueue_training(store, variant="ila", backbone=TINY, method_overrides={"ds_locations": (1, 3)},
                         probe=False, publish_start=False, steps=6, batch_size=8, warmup_steps=1,
                         use_feature_cache=True, freeze_cls_token=True)  # fmt: skip
    outcome = Worker(tmp_path).run_once()
    assert outcome.status == "succeeded"
    with LabelStore.open(tmp_path / "ila.db") as store:
        versions = store.model_versions()
    recorded = versions[0]["manifest"]["extra"]["pace"]
    assert recorded["steps"] == 6 and recorded["train_images"] == 24 and recorded["holdout_images"] == 6
    assert recorded["fill_views"] == 24 * 2 + 6 and recorded["fill_seconds"] > 0
    pace = latest_pace(versions, backbone="test_vit", image_size=96)
    est = estimate_job(24, 6, TrainConfig(steps=6, batch_size=8, minutes=None), pace)
    assert est.fill_views == 0 and est.train_s == pytest.approx(recorded["train_seconds"], rel=1e-6)
