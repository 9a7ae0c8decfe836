"""Retraining that never serves a worse model than a probe: probe first, then ILA, promotion rule, CLI contract."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from ila_core.cli import main
from ila_core.config import BackboneConfig
from ila_core.embeddings import EmbeddingStore, build_embedder, embed_samples
from ila_core.jobs import runner as runner_module
from ila_core.jobs.worker import Worker, enqueue_training
from ila_core.store import LabelStore
from ila_core.training.budget import StepBudget
from ila_core.training.dataset import snapshot
from ila_core.training.metrics import EvalMetrics
from ila_core.training.toydata import write_toy_store

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = BackboneConfig(name="test_vit", image_size=96, weights="none")
TINY_ARGS = ["--backbone", "test_vit", "--weights", "none", "--image-size", "96", "--ds-locations", "1,3"]


@pytest.fixture
def data_dir(tmp_path):
    write_toy_store(tmp_path, num_classes=3, train_per_class=8, holdout_per_class=3)
    return tmp_path


def _enqueue(data_dir, **params):
    params = {"variant": "ila", "backbone": TINY, "method_overrides": {"ds_locations": (1, 3)}, "epochs": 2,
              "batch_size": 8, "warmup_steps": 2, **params}  # fmt: skip
    with LabelStore.open(data_dir / "ila.db") as store:
        return enqueue_training(store, user="tester", **params)


def test_probe_is_published_and_served_before_ila_trains(data_dir):
    """Every job publishes a probe first; the app is told at once (before the ILA training steps)."""
    events = []
    promoted = []
    worker = Worker(data_dir, progress_interval_s=0, on_event=events.append, on_promoted=promoted.append)
    _enqueue(data_dir)
    outcome = worker.run_once()
    assert outcome.status == "succeeded"
    kinds = [v["kind"] for v in outcome.versions]
    assert kinds == ["probe", "ila", "ila"]  # the probe, the step-0 network (LP-FT head), the trained network
    assert outcome.versions[1]["steps"] == 0 and "step 0" in outcome.versions[1]["note"]
    assert outcome.versions[2]["steps"] > 0
    probe = outcome.versions[0]
    assert probe["promoted"] and promoted[0] == probe["version_id"]  # the first model serves
    first_promotion = next(i for i, e in enumerate(events) if e["kind"] == "promoted")
    first_train_step = next(i for i, e in enumerate(events) if e.get("phase") == "train")
    assert first_promotion < first_train_step
    with LabelStore.open(data_dir / "ila.db") as store:
        rows = {v["id"]: v for v in store.model_versions()}
        active = store.active_version()
    assert rows[probe["version_id"]]["kind"] == "probe" and rows[outcome.versions[2]["version_id"]]["kind"] == "ila"
    assert rows[outcome.versions[1]["version_id"]]["manifest"]["extra"]["stage"] == "start"
    assert all(rows[v["version_id"]]["note"] for v in outcome.versions)  # every version says why (not) served
    assert outcome.serving["version_id"] == active["id"]
    assert rows[probe["version_id"]]["manifest"]["extra"]["kind"] == "probe"


def test_chance_level_ila_is_never_promoted_over_the_probe(data_dir, monkeypatch):
    """An ILA version worse than the probe on the same holdout is kept, not served, with the reason."""
    real_fit = runner_module.fit

    def bad_fit(*args, **kwargs):
        result = real_fit(*args, **kwargs)
        n = result.metrics.count
        chance = EvalMetrics(count=n, loss=1.1, top1=1 / 3, top5=1.0, macro_f1=0.17)
        return dataclasses.replace(result, metrics=chance)

    monkeypatch.setattr(runner_module, "fit", bad_fit)
    _enqueue(data_dir, publish_start=False)
    outcome = Worker(data_dir, progress_interval_s=0).run_once()
    probe, ila = outcome.versions
    with LabelStore.open(data_dir / "ila.db") as store:
        active = store.active_version()
        kept = store.model_version(ila["version_id"])
    assert probe["metrics"]["top1"] > 1 / 3  # the toy cultivars are easy for the probe
    assert active["id"] == probe["version_id"] and not ila["promoted"]
    assert kept["status"] == "candidate" and "below the probe" in kept["note"]
    assert outcome.serving["kind"] == "probe" and outcome.serving["version_id"] == probe["version_id"]


def test_trained_network_must_match_the_step_zero_network(data_dir, monkeypatch):
    """A trained version worse than the job's own starting point (LP-FT head, untrained adapters) is not served."""
    real_fit = runner_module.fit
    seen = {}

    def worse_than_start(*args, **kwargs):
        on_start = kwargs["on_start"]
        kwargs["on_start"] = lambda m: (seen.setdefault("start", m), on_start(m))
        result = real_fit(*args, **kwargs)
        start = seen["start"]
        worse = EvalMetrics(count=start.count, loss=start.loss + 1.0, top1=max(start.top1 - 1 / 9, 0.0), top5=1.0,
                            macro_f1=max(start.macro_f1 - 0.1, 0.0))  # fmt: skip
        return dataclasses.replace(result, metrics=worse)

    monkeypatch.setattr(runner_module, "fit", worse_than_start)
    _enqueue(data_dir, probe=False)  # no probe: the step-0 network is the first version and serves
    outcome = Worker(data_dir, progress_interval_s=0).run_once()
    start, trained = outcome.versions
    assert start["steps"] == 0 and start["promoted"]
    assert not trained["promoted"] and "step-0 network" in trained["note"] and "below" in trained["note"]
    assert outcome.serving["version_id"] == start["version_id"]


def test_probe_only_job(data_dir):
    """variant 'probe' publishes the probe alone (seconds), with its cross-validated alpha in the manifest."""
    _enqueue(data_dir, variant="probe", method_overrides={})
    outcome = Worker(data_dir, progress_interval_s=0).run_once()
    assert outcome.status == "succeeded" and [v["kind"] for v in outcome.versions] == ["probe"]
    with LabelStore.open(data_dir / "ila.db") as store:
        version = store.active_version()
    extra = version["manifest"]["extra"]
    assert version["kind"] == "probe" and extra["alpha"] > 0 and "cv_top1" in extra
    assert (data_dir / "cache" / "embeddings").is_dir()  # embeddings kept for the next job


def test_train_json_contract_and_eval(data_dir, capsys):
    """`train --json` ends with model_version + metrics of the serving version and every published version."""
    code = main(["train", "--data-dir", str(data_dir), *TINY_ARGS, "--epochs", "2", "--batch-size", "8",
                 "--no-progress", "--json"])  # fmt: skip
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and out["status"] == "succeeded"
    assert [v["kind"] for v in out["versions"]] == ["probe", "ila", "ila"]
    assert [v["steps"] > 0 for v in out["versions"]] == [False, False, True]
    assert all({"version_id", "kind", "metrics", "promoted"} <= set(v) for v in out["versions"])
    serving = [v for v in out["versions"] if v["version_id"] == out["model_version"]]
    assert serving and out["metrics"]["top1"] == pytest.approx(serving[0]["metrics"]["top1"])
    assert main(["eval", "--data-dir", str(data_dir), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["model_version"] == out["model_version"]
    assert evaluated["metrics"]["top1"] == pytest.approx(out["metrics"]["top1"], abs=0.34 / 3)  # fp16 rows vs fp32


def test_embeddings_are_computed_once_and_survive_restarts(data_dir):
    """A second store over the same folder finds every row; nothing is recomputed."""
    with LabelStore.open(data_dir / "ila.db") as store:
        data = snapshot(store, data_dir)
    embedder = build_embedder(TINY)
    folder = data_dir / "cache" / "embeddings"
    first = embed_samples(data.train, embedder, EmbeddingStore(folder))
    calls = []
    real = embedder.compute
    embedder.compute = lambda *a, **k: calls.append(1) or real(*a, **k)
    again = embed_samples(data.train, embedder, EmbeddingStore(folder))
    assert not calls and torch.equal(first, again) and first.dtype == torch.float16
    assert first.shape == (len(data.train), 2 * embedder.dim)


def test_embedding_store_bounds_memory_and_compacts(tmp_path):
    """Shards beyond the memory bound are dropped from memory and read again; many shards merge into one."""
    store = EmbeddingStore(tmp_path, max_memory_mb=0.01)  # ~10 KB: a few shards of 8 x 64 fp16 rows
    shas = [f"{i:064x}" for i in range(8 * 70)]
    rows = torch.randn(len(shas), 64)
    for i in range(0, len(shas), 8):
        store.put("ns", shas[i : i + 8], rows[i : i + 8])
    assert store.memory_bytes <= 0.01 * 2**20 + 8 * 64 * 2
    assert len(list((tmp_path / EmbeddingStore.folder_name("ns")).glob("*.safetensors"))) < 70
    mask, got = EmbeddingStore(tmp_path).get("ns", shas)
    assert all(mask) and torch.allclose(got.float(), rows, atol=1e-2)
    (next((tmp_path / EmbeddingStore.folder_name("ns")).glob("*.safetensors"))).write_bytes(b"torn")
    mask, _ = EmbeddingStore(tmp_path).get("ns", shas[:1])  # a torn shard is a miss, never an error
    assert mask == [False] or mask == [True]


def test_step_budget_counts_steps_and_says_when_cut():
    """The plan shrinks to what fits in the budget from the recent step time, never below what is done."""
    now = [0.0]
    budget = StepBudget(100, minutes=1.0, clock=lambda: now[0])
    budget.start()
    for step in range(1, 11):
        now[0] += 2.0  # 2 s a step: 30 steps fit in a minute
        budget.step_done(step)
    assert budget.cut and 28 <= budget.planned <= 31
    assert "of 100 planned steps" in budget.describe()
    free = StepBudget(100, minutes=None)
    free.start()
    assert not free.step_done(1) and free.planned == 100 and not free.cut


def test_fit_in_steps_with_lp_init(data_dir):
    """`steps` sets the run's length whatever the set size; LP-FT starts the head at a closed-form fit."""
    from ila_core.adapters import method_config
    from ila_core.training.config import preset
    from ila_core.training.fit import fit, prepare_model

    with LabelStore.open(data_dir / "ila.db") as store:
        data = snapshot(store, data_dir)
    config = preset("quick", steps=5, lp_init=True, minutes=None, batch_size=8, warmup_steps=1)
    built = prepare_model(TINY, method_config("ila", ds_locations=(1, 3)), len(data.class_names), config)
    result = fit(built, data, config)
    assert result.steps == 5 and result.steps_requested == 5 and not result.budget_cut
    assert result.head_init is not None and result.head_init["alpha"] > 0
    assert result.shortfall() is None and result.metrics is not None and not math.isnan(result.metrics.top1)


def test_background_embedder_embeds_new_images_once(data_dir):
    """After import every image gets its row once; later passes embed only what was added; the probe reuses them."""
    import timm
    from safetensors.torch import save_file

    from ila_core.embeddings import BackgroundEmbedder, embeddings_dir
    from ila_core.training.toydata import add_toy_images

    # a weight file, as in the app: random-init backbones differ with the head size, files never do
    weights = data_dir / "test_vit.safetensors"
    save_file(timm.create_model("test_vit", pretrained=False, num_classes=0).state_dict(), str(weights))
    backbone = BackboneConfig(name="test_vit", image_size=96, weights="file", weights_file=weights)
    store = EmbeddingStore(embeddings_dir(data_dir))
    indexer = BackgroundEmbedder(data_dir / "ila.db", data_dir, backbone, store, batch_size=8)
    first = indexer.run_once()
    assert first == 3 * (8 + 3) + 3 * 8  # every image, and the mirror view of every labelled training image
    assert indexer.status().done and not indexer.status().running
    assert indexer.run_once() == 0
    with LabelStore.open(data_dir / "ila.db") as db:
        add_toy_images(db, data_dir, 1, range(100, 102), split="train")
    assert indexer.run_once() == 2 + 2
    calls = []  # the probe stage must find every row: count the images it embeds itself
    from ila_core.embeddings import embedder as embedder_module

    original = embedder_module.Embedder.compute
    embedder_module.Embedder.compute = lambda self, *a, **k: calls.append(len(a[0])) or original(self, *a, **k)
    try:
        _enqueue(data_dir, variant="probe", method_overrides={}, backbone=backbone)
        Worker(data_dir, progress_interval_s=0, embeddings=store).run_once()
    finally:
        embedder_module.Embedder.compute = original
    assert sum(calls) == 0  # the probe found every row it needs


def test_late_placement_is_the_recipe_default_unless_the_job_names_blocks():
    """ds_placement 'late' puts the DS-ILAs after blocks depth-3 and depth-2; explicit locations win."""
    from ila_core.jobs.params import job_params, parse_job_params
    from ila_core.training.config import late_ds_locations

    _, method, config = parse_job_params(job_params(ds_placement="late"))  # the default DINOv2 ViT-S/14
    assert config.ds_placement == "late" and method.ds_locations == (9, 10) == late_ds_locations(12)
    _, named, _ = parse_job_params(job_params(ds_placement="late", method_overrides={"ds_locations": [3, 7]}))
    assert named.ds_locations == (3, 7)
    _, paper, _ = parse_job_params(job_params(preset_name="paper"))
    assert paper.ds_locations == (3, 7)
    with pytest.raises(ValueError, match="ds_placement"):
        job_params(ds_placement="early")


def test_quick_preset_counts_steps_with_lp_ft_and_late_placement():
    """The quick recipe of the study: 120 steps, LP-FT head, late DS placement; asking for epochs counts epochs."""
    from ila_core.training.config import PRESETS, preset

    quick = PRESETS["quick"]
    assert quick.steps == 120 and quick.lp_init and quick.ds_placement == "late"
    assert quick.minutes == 4.0 and quick.use_feature_cache and quick.freeze_cls_token
    assert preset("quick", epochs=3).steps is None and preset("quick", epochs=3, steps=7).steps == 7
    paper = PRESETS["paper"]
    assert paper.steps is None and not paper.lp_init and paper.ds_placement == "paper" and paper.epochs == 50
