"""Training recipe, schedule, metrics, data snapshot and the fit loop on the tiny model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ila_core.store import LabelStore
from ila_core.training.config import PRESETS, TrainConfig, preset
from ila_core.training.dataset import image_path, snapshot
from ila_core.training.fit import fit, prepare_model
from ila_core.training.loop import build_optimizer
from ila_core.training.metrics import MetricAccumulator
from ila_core.training.schedule import CosineWarmup
from ila_core.training.toydata import add_toy_images, write_toy_store
from ila_core.training.transforms import eval_transform, preprocess_for, train_transform

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(epochs=4, batch_size=8, warmup_steps=2, lr=0.05, minutes=None, use_feature_cache=False, drop_rate=0.0)




@pytest.fixture
def toy(tmp_path):
    store_path = write_toy_store(tmp_path, num_classes=3, train_per_class=8, holdout_per_class=2)
    with LabelStore.open(store_path) as store:
        data = snapshot(store, tmp_path)
    return tmp_path, store_path, data


def test_paper_preset_matches_the_recipe():
    """The paper preset is SGD-Nesterov 0.9, lr 0.1, wd 0, batch 8, 50 epochs, cosine 500/1e-6/1e-5, clip 1, AMP."""
    p = PRESETS["paper"]
    assert (p.lr, p.momentum, p.nesterov, p.weight_decay, p.batch_size, p.epochs) == (0.1, 0.9, True, 0.0, 8, 50)
    assert (p.warmup_steps, p.warmup_lr, p.min_lr, p.clip_grad, p.amp, p.drop_rate) == (500, 1e-6, 1e-5, 1.0, True, 0.1)
    assert p.resize_ratio == 1.34 and p.hflip and not p.use_feature_cache


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(lr=0), dict(momentum=1.0), dict(clip_grad=0),
                                 dict(minutes=-1), dict(device="tpu"), dict(nesterov=True, momentum=0.0)])
def test_train_config_rejects_bad_values(bad):
    """Invalid settings raise ValueError."""
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_preset_overrides_and_round_trip():
    """preset() applies overrides (None ignored) and to_dict/from_dict round-trips."""
    cfg = preset("quick", epochs=3, minutes=None)
    assert cfg.epochs == 3 and cfg.minutes == PRESETS["quick"].minutes
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown preset"):
        preset("fast")


def test_schedule_matches_timm_cosine():
    """Per-iteration warm-up + cosine equals timm's CosineLRScheduler (warmup_prefix=False, t_in_epochs=False)."""
    from timm.scheduler import CosineLRScheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = CosineLRScheduler(opt, t_initial=40, lr_min=1e-5, warmup_t=7, warmup_lr_init=1e-6, t_in_epochs=False)
    ours = CosineWarmup(base_lr=0.1, total_steps=40, warmup_steps=7, warmup_lr=1e-6, min_lr=1e-5)
    for step in range(45):
        ref.step_update(step)
        assert ours(step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9), step


def test_metrics_from_known_predictions():
    """Top-1, top-k, macro-F1, per-class accuracy and the confusion matrix of a hand-made batch."""
    logits = torch.tensor([[3.0, 2, 1], [3, 2, 1], [1, 3, 2], [2, 1, 3]])
    targets = torch.tensor([0, 1, 1, 1])
    acc = MetricAccumulator(3, topk=2)
    acc.update(logits, targets)
    m = acc.compute(["a", "b", "c"])
    assert m.top1 == 0.5 and m.top5 == 0.75 and m.count == 4
    assert m.confusion == [[1, 0, 0], [1, 1, 1], [0, 0, 0]]
    assert m.per_class_accuracy == {"a": 1.0, "b": pytest.approx(1 / 3), "c": None}
    # F1: a = 2/3, b = 2*1/(3+1) = 0.5, c = 0 (predicted once, never true)
    assert m.macro_f1 == pytest.approx((2 / 3 + 0.5 + 0.0) / 3)


def test_transforms_follow_the_weak_recipe(tiny_vit):
    """Square resize to int(1.34 S), crop S; eval is deterministic; mean/std come from timm."""
    from PIL import Image

    prep = preprocess_for(tiny_vit, 96)
    assert prep.resize == int(1.34 * 96) and prep.mean == (0.5, 0.5, 0.5)
    img = Image.new("RGB", (200, 120), (255, 0, 0))
    assert train_transform(prep)(img).shape == (3, 96, 96)
    ev = eval_transform(prep)
    torch.testing.assert_close(ev(img), ev(img))
    assert float(ev(img)[0].mean()) == pytest.approx(1.0, abs=1e-3)  # red channel normalised to +1


def test_optimizer_gets_only_trainable_parameters(tiny_vit):
    """SGD receives exactly the requires_grad parameters."""
    opt = build_optimizer(tiny_vit, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.0)
    got = {id(p) for g in opt.param_groups for p in g["params"]}
    assert got == {id(p) for p in tiny_vit.parameters() if p.requires_grad}
    assert opt.defaults["nesterov"]


def test_adapter_lr_scale_applies_to_all_but_the_head(tiny_vit):
    """The head trains at lr, every other trainable tensor at lr x adapter_lr_scale."""
    from ila_core.training.schedule import set_lr

    opt = build_optimizer(tiny_vit, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.0, adapter_lr_scale=0.25)
    set_lr(opt, 0.2)
    head = {id(p) for p in tiny_vit.head.parameters()}
    for group in opt.param_groups:
        expected = 0.2 if all(id(p) in head for p in group["params"]) else 0.05
        assert group["lr"] == pytest.approx(expected)


def test_snapshot_excludes_later_corrections(tmp_path):
    """Labels recorded after the snapshot event are not in the training set (CON-09)."""
    store_path = write_toy_store(tmp_path, num_classes=2, train_per_class=2, holdout_per_class=1)
    with LabelStore.open(store_path) as store:
        snap = store.last_event_id()
        add_toy_images(store, tmp_path, 2, range(3), split="train")
        first = store.labelled_items(split="train")[0]
        store.record_label(first.image_id, "cultivar-1", client_event_id="late-fix")
        old, new = snapshot(store, tmp_path, max_event_id=snap), snapshot(store, tmp_path)
    assert old.class_names == ["cultivar-0", "cultivar-1"] and len(old.train) == 4
    assert old.train[0].label == 0 and new.train[0].label == 1
    assert new.class_names[-1] == "cultivar-2" and len(new.train) == 7


def test_snapshot_skips_missing_files(toy):
    """An image whose file vanished is left out and counted, not fatal."""
    data_dir, store_path, data = toy
    data.train[0].path.unlink()
    with LabelStore.open(store_path) as store:
        again = snapshot(store, data_dir)
    assert len(again.train) == len(data.train) - 1 and again.skipped == {"image file missing": 1}


def test_image_path_refuses_escapes(tmp_path):
    """Stored paths stay inside the data directory."""
    assert image_path(tmp_path, "images/ab.png") == tmp_path / "images" / "ab.png"
    assert image_path(tmp_path, "ab.png") == tmp_path / "images" / "ab.png"
    with pytest.raises(ValueError):
        image_path(tmp_path, "../x.png")


def test_loss_is_finite_and_decreases(toy, tiny_backbone, ila_config):
    """A few epochs on the easy toy set: the loss is finite and ends lower than it starts."""
    _, _, data = toy
    cfg = TrainConfig(**{**FAST, "epochs": 8, "lr": 0.05})
    built = prepare_model(tiny_backbone, ila_config, 3, cfg)
    result = fit(built, data, cfg)
    losses = [row["loss"] for row in result.history]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert min(losses[-2:]) < losses[0]
    assert result.metrics is not None and result.metrics.count == len(data.holdout)


def test_stop_is_honoured_between_batches(toy, tiny_backbone, ila_config):
    """should_stop ends the run after the current batch, without evaluation."""
    _, _, data = toy
    cfg = TrainConfig(**FAST)
    calls = []
    result = fit(prepare_model(tiny_backbone, ila_config, 3, cfg), data, cfg,
                 should_stop=lambda: len(calls) >= 2, on_progress=calls.append)  # fmt: skip
    assert result.stopped and result.metrics is None and result.steps == 2


def test_same_seed_same_weights(toy, tiny_backbone, ila_config):
    """Two runs with the same seed give identical adapters; another seed does not."""
    from ila_core.adapters import adapter_state_dict

    _, _, data = toy
    runs = []
    for seed in (3, 3, 4):
        cfg = TrainConfig(**{**FAST, "epochs": 1, "seed": seed})
        built = prepare_model(tiny_backbone, ila_config, 3, cfg)
        fit(built, data, cfg)
        runs.append(adapter_state_dict(built.model)["head.weight"])
    torch.testing.assert_close(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_time_budget_shortens_the_run(toy, tiny_backbone, ila_config):
    """A tiny minutes budget trains fewer epochs than asked."""
    _, _, data = toy
    cfg = TrainConfig(**{**FAST, "epochs": 50, "minutes": 0.001})
    result = fit(prepare_model(tiny_backbone, ila_config, 3, cfg), data, cfg)
    assert 1 <= result.epochs < 50 and not result.stopped and result.metrics is not None


def test_freeze_cls_token_option(tiny_backbone, ila_config):
    """freeze_cls_token turns the method's CLS training off (needed for a cacheable prefix)."""
    built = prepare_model(tiny_backbone, ila_config, 3, dataclasses.replace(TrainConfig(), freeze_cls_token=True))
    assert not built.model.cls_token.requires_grad and built.model.head.weight.requires_grad


def test_shared_backbone_tensors_are_not_copied_or_changed(toy, tiny_backbone, ila_config):
    """A second model can share the first's frozen tensors; training it changes none of them."""
    from ila_core.checkpoint import build_reproducible
    from ila_core.training.fit import share_frozen_weights

    _, _, data = toy
    served = build_reproducible(tiny_backbone, ila_config, 3).model
    before = {n: p.detach().clone() for n, p in served.named_parameters() if not p.requires_grad}
    cfg = TrainConfig(**{**FAST, "epochs": 1})
    built = prepare_model(tiny_backbone, ila_config, 3, cfg)
    assert share_frozen_weights(served, built.model) == len(before)
    assert built.model.patch_embed.proj.weight.data_ptr() == served.patch_embed.proj.weight.data_ptr()
    fit(built, data, cfg)
    for name, p in served.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, before[name]), name


def test_zero_init_adapter_output_starts_adapters_as_their_shortcut(tiny_backbone, ila_config):
    """With zeroed output projections the adapter branch adds nothing, so train mode is deterministic."""
    from ila_core.training.fit import zero_adapter_outputs

    cfg = TrainConfig(**{**FAST, "zero_init_adapter_output": True})
    model = prepare_model(tiny_backbone, ila_config, 3, cfg).model.train()
    assert float(model.blocks[1].adapter.up.weight.detach().abs().sum()) == 0.0
    x = torch.randn(4, 3, 96, 96)
    torch.testing.assert_close(model(x), model(x))  # adapter dropout multiplies zeros
    noisy = prepare_model(tiny_backbone, ila_config, 3, TrainConfig(**FAST)).model.train()
    assert not torch.allclose(noisy(x), noisy(x))
    assert zero_adapter_outputs(noisy) == 2


def test_refit_head_leaves_the_closed_form_fit_of_the_trained_features(tmp_path, tiny_backbone, ila_config):
    """With refit_head the head after training is the ridge fit on the trained network's own features."""
    from ila_core.checkpoint import backbone_identity
    from ila_core.training.feature_cache import CachedDataset, CachedFeatures, FeatureCache, SuffixModel, plan_prefix
    from ila_core.training.head_init import init_head_closed_form
    from ila_core.training.toydata import write_toy_store
    from ila_core.training.transforms import preprocess_for

    store_path = write_toy_store(tmp_path, num_classes=3, train_per_class=6, holdout_per_class=2)
    with LabelStore.open(store_path) as store:
        data = snapshot(store, tmp_path)
    cfg = TrainConfig(steps=6, batch_size=6, warmup_steps=1, lr=0.05, drop_rate=0.0, use_feature_cache=True,
                      freeze_cls_token=True, lp_init=True, refit_head=True)  # fmt: skip
    method = dataclasses.replace(ila_config, train_cls_token=False)
    built = prepare_model(tiny_backbone, method, 3, cfg)
    cache = FeatureCache(max_memory_mb=64)
    fit(built, data, cfg, cache=cache)
    model = built.model.eval()
    head = model.get_classifier()
    after = head.weight.detach().clone()
    plan = plan_prefix(model)
    prep = preprocess_for(model, tiny_backbone.image_size, cfg.resize_ratio)
    features = CachedFeatures(model, plan, prep, cache, backbone_identity(built))
    views = [CachedDataset(data.train, features, train=False, view=v) for v in (0, 1)]
    init_head_closed_form(SuffixModel(model, plan), head, views, 3, device=torch.device("cpu"), seed=cfg.seed)
    torch.testing.assert_close(head.weight, after, rtol=1e-4, atol=1e-5)
