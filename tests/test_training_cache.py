"""Frozen-prefix feature cache: where the prefix ends, equal logits cached vs uncached, bounded storage."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ila_core.adapters import ILAConfig, method_config
from ila_core.checkpoint import build_reproducible
from ila_core.store import LabelStore
from ila_core.training.config import TrainConfig
from ila_core.training.dataset import ImageDataset, snapshot
from ila_core.training.feature_cache import CachedFeatures, FeatureCache, SuffixModel, plan_prefix, run_prefix
from ila_core.training.fit import fit, prepare_model
from ila_core.training.toydata import write_toy_store
from ila_core.training.transforms import eval_transform, preprocess_for

pytestmark = pytest.mark.usefixtures("one_thread")




def _built(tiny_backbone, method):
    return build_reproducible(tiny_backbone, method, 3)


def test_trainable_cls_limits_the_prefix_to_the_patch_embedding(tiny_backbone, ila_config):
    """With the CLS token trainable, only the patch embedding is frozen (attention mixes CLS into patches)."""
    plan = plan_prefix(_built(tiny_backbone, ila_config).model)
    assert plan is not None and plan.embed_only and plan.describe() == "patch_embed"


def test_frozen_cls_caches_blocks_before_the_first_adapter(tiny_backbone, ila_config):
    """With the CLS frozen, blocks before the first DS-ILA and that block's base run in the prefix."""
    plan = plan_prefix(_built(tiny_backbone, dataclasses.replace(ila_config, train_cls_token=False)).model)
    assert (plan.embed_only, plan.full_blocks, plan.split_block) == (False, 1, True)


def test_ila_plus_plus_prefix_is_the_embedding(tiny_backbone):
    """ILA++ has adapters inside block 0, so only the embedding stage is cacheable."""
    method = method_config("ila++", ds_locations=(1, 3), train_cls_token=False)
    plan = plan_prefix(_built(tiny_backbone, method).model)
    assert (plan.embed_only, plan.full_blocks, plan.split_block) == (False, 0, False)


def test_linear_probe_caches_only_the_cls_token(tiny_backbone):
    """Every block frozen and a CLS-pooled head: the cache keeps one token per view, and the logits agree."""
    model = _built(tiny_backbone, method_config("linear", train_cls_token=False)).model.eval()
    plan = plan_prefix(model)
    assert (plan.full_blocks, plan.keep_tokens) == (len(model.blocks), 1) and plan.describe().endswith("tokens<1")
    images = torch.randn(2, 3, tiny_backbone.image_size, tiny_backbone.image_size)
    tokens = run_prefix(model, plan, images)
    assert tokens.shape == (2, 1, model.embed_dim)
    with torch.no_grad():
        torch.testing.assert_close(SuffixModel(model, plan)(tokens), model(images), rtol=1e-5, atol=1e-5)
    ila = plan_prefix(_built(tiny_backbone, ILAConfig(ds_locations=(1, 3), train_cls_token=False)).model)
    assert ila.keep_tokens == 0  # adapters read every token: the whole prefix output stays


def test_full_finetune_has_no_prefix(tiny_backbone):
    """Nothing is cacheable when the patch embedding trains."""
    assert plan_prefix(_built(tiny_backbone, method_config("full")).model) is None


@pytest.mark.parametrize("train_cls", [True, False])
def test_cached_and_uncached_eval_logits_agree(tmp_path, tiny_backbone, train_cls):
    """Eval-mode logits from fp16-cached prefix tokens equal the full forward within fp16 tolerance."""
    store_path = write_toy_store(tmp_path, num_classes=3, train_per_class=2, holdout_per_class=1)
    with LabelStore.open(store_path) as store:
        data = snapshot(store, tmp_path)
    built = _built(tiny_backbone, ILAConfig(ds_locations=(1, 3), train_cls_token=train_cls))
    model = built.model.eval()
    prep = preprocess_for(model, 96)
    plan = plan_prefix(model)
    features = CachedFeatures(model, plan, prep, FeatureCache(), "test")
    samples = data.train + data.holdout
    assert features.fill(samples, (0,)) == len(samples)
    suffix = SuffixModel(model, plan).eval()
    ds = ImageDataset(samples, eval_transform(prep))
    with torch.no_grad():
        full = model(torch.stack([ds[i][0] for i in range(len(ds))]))
        cached = suffix(torch.stack([features.tokens(s, 0).float() for s in samples]))
    torch.testing.assert_close(cached, full, atol=2e-2, rtol=1e-2)
    assert features.fill(samples, (0,)) == 0  # second fill: everything is a hit


def test_prefix_runs_without_dropout(tiny_backbone, ila_config):
    """The prefix computes the same tokens in train mode as in eval mode (dropout off inside it)."""
    built = build_reproducible(tiny_backbone, dataclasses.replace(ila_config, train_cls_token=False), 3, drop_rate=0.5)
    model, plan = built.model.train(), plan_prefix(built.model)
    x = torch.randn(2, 3, 96, 96)
    torch.testing.assert_close(run_prefix(model, plan, x), run_prefix(model, plan, x))
    assert model.training and model.blocks[0].training


def test_cache_spills_to_disk_within_bounds(tmp_path):
    """Entries beyond the memory budget go to disk, beyond the disk budget are dropped; disk entries reload."""
    cache = FeatureCache(tmp_path / "cache", max_memory_mb=1 / 1024, max_disk_mb=2 / 1024, write_through=False)
    t = torch.arange(256, dtype=torch.float32)  # 512 bytes as fp16
    for i in range(8):
        cache.put(f"{i:02d}" * 32, t + i)
    stats = cache.stats()
    assert stats["memory_bytes"] <= 1024 and stats["disk_bytes"] <= 2048 and stats["dropped"] == 2
    torch.testing.assert_close(cache.get("05" * 32).float(), t + 5)  # from disk
    assert cache.get("07" * 32) is None
    again = FeatureCache(tmp_path / "cache", max_memory_mb=1, max_disk_mb=1)
    assert again.get("02" * 32) is not None  # persisted across instances


def test_write_through_starts_the_next_process_warm(tmp_path):
    """With write-through, a fresh cache on the same folder (another process) finds every entry."""
    first = FeatureCache(tmp_path / "c", max_memory_mb=64)
    first.put("cd" * 32, torch.ones(3))
    second = FeatureCache(tmp_path / "c", max_memory_mb=64)
    torch.testing.assert_close(second.get("cd" * 32).float(), torch.ones(3))
    assert second.stats()["hits"] == 1 and second.stats()["memory_bytes"] == 6


def test_damaged_disk_entry_is_a_miss(tmp_path):
    """A corrupt spilled entry is deleted and reported as a miss."""
    cache = FeatureCache(tmp_path / "c", max_memory_mb=0, max_disk_mb=1)
    key = "ab" * 32
    cache.put(key, torch.ones(4))
    path = tmp_path / "c" / "ab" / f"{key}.safetensors"
    path.write_bytes(b"garbage")
    assert cache.get(key) is None and not path.exists()


def test_cached_training_learns(tmp_path, tiny_backbone, ila_config):
    """fit with the cache on trains (finite, decreasing loss) and reports cache hits."""
    store_path = write_toy_store(tmp_path, num_classes=3, train_per_class=8, holdout_per_class=2)
    with LabelStore.open(store_path) as store:
        data = snapshot(store, tmp_path)
    cfg = TrainConfig(epochs=8, batch_size=8, warmup_steps=2, lr=0.05, drop_rate=0.0, use_feature_cache=True,
                      freeze_cls_token=True)  # fmt: skip
    result = fit(prepare_model(tiny_backbone, ila_config, 3, cfg), data, cfg)
    losses = [r["loss"] for r in result.history]
    assert min(losses[-2:]) < losses[0] and result.cache_stats["hits"] > 0


def test_linear_variant_trains_from_one_cached_token_per_view(tmp_path):
    """A quick linear job fills its cache with CLS rows only (kilobytes, not the whole token grid) and trains."""
    from ila_core.config import BackboneConfig
    from ila_core.training.config import preset

    store_path = write_toy_store(tmp_path, num_classes=3, train_per_class=4, holdout_per_class=1)
    with LabelStore.open(store_path) as store:
        data = snapshot(store, tmp_path)
    config = preset("quick", steps=4, batch_size=4, warmup_steps=1, minutes=None)
    built = prepare_model(BackboneConfig(name="test_vit", image_size=96, weights="none"), method_config("linear"),
                          len(data.class_names), config)  # fmt: skip
    cache = FeatureCache(max_memory_mb=64)
    result = fit(built, data, config, cache=cache)
    entries = len(data.train) * 2 + len(data.holdout)  # two views per training image, one per holdout image
    assert result.steps == 4 and result.metrics is not None
    assert cache.stats()["memory_bytes"] <= entries * built.model.embed_dim * 2 * 2  # one fp16 token (+ slack)


def test_residency_plan_puts_training_images_first():
    """Training images (every view) fill the budget first; holdout images take what is left."""
    from ila_core.training.feature_cache import plan_residency

    full = plan_residency(10_000, 100, n_train=40, train_views=2, n_holdout=10)
    assert (full.train, full.holdout, full.train_total, full.holdout_total, full.note) == (40, 10, 40, 10, None)
    tight = plan_residency(4_150, 100, n_train=40, train_views=2, n_holdout=10)
    assert (tight.train, tight.holdout) == (20, 1) and tight.train < tight.train_total
    assert tight.note.startswith("the feature cache holds 20 of 40 training images")


def test_a_cache_too_small_for_the_set_holds_a_fixed_subset_and_says_so(tmp_path, tiny_backbone, ila_config):
    """Past the cache budget, fit caches a fixed subset (nothing dropped or evicted while training), trains every
    step anyway (the rest run the frozen blocks each time), and its result says how many images the cache holds."""
    store_path = write_toy_store(tmp_path, num_classes=3, train_per_class=8, holdout_per_class=2)
    with LabelStore.open(store_path) as store:
        data = snapshot(store, tmp_path)
    cfg = TrainConfig(epochs=2, batch_size=8, warmup_steps=1, lr=0.05, drop_rate=0.0, use_feature_cache=True,
                      freeze_cls_token=True)  # fmt: skip
    roomy = FeatureCache(max_memory_mb=64)
    whole = fit(prepare_model(tiny_backbone, ila_config, 3, cfg), data, cfg, cache=roomy)
    entry = roomy.stats()["memory_bytes"] // (len(data.train) * 2 + len(data.holdout))
    assert whole.cache_note is None
    small = FeatureCache(max_memory_mb=entry * 2 * 10 / 2**20)  # room for 10 training images, both views
    result = fit(prepare_model(tiny_backbone, ila_config, 3, cfg), data, cfg, cache=small)
    assert result.cache_note.startswith(f"the feature cache holds 10 of {len(data.train)} training images")
    assert result.steps == whole.steps and result.metrics is not None
    stats = small.stats()
    assert stats["dropped"] == 0 and stats["memory_bytes"] <= small.capacity_bytes()
    # The uncached images get the same fp16 tokens, computed on the spot: the run is the same run.
    losses = [r["loss"] for r in result.history]
    assert losses == pytest.approx([r["loss"] for r in whole.history], rel=1e-3)


def test_crop_views_are_fixed_random_crops_of_the_train_recipe(tiny_vit):
    """View 2 onwards: an S crop of the square resize at an offset (and flip) drawn once per view id, the same
    pixels in every call and every process; distinct from the centre view; ids past the cap are refused."""
    from PIL import Image

    from ila_core.training.config import MAX_CROP_VIEWS
    from ila_core.training.transforms import train_views, view_transform

    prep = preprocess_for(tiny_vit, 32)
    img = Image.effect_noise((100, 80), 60).convert("RGB")
    centre = view_transform(prep, 0)(img)
    crops = [view_transform(prep, v)(img) for v in range(2, 8)]
    assert all(c.shape == centre.shape for c in crops)
    assert sum(not torch.equal(c, centre) for c in crops) >= 5  # offsets are drawn, not the centre again
    torch.testing.assert_close(view_transform(prep, 3)(img), crops[1])  # deterministic per view id
    with pytest.raises(ValueError, match="view must be one of"):
        view_transform(prep, 2 + MAX_CROP_VIEWS)
    assert train_views(True, 3) == (0, 1, 2, 3, 4) and train_views(False) == (0,)


def test_crop_views_need_the_flip_and_a_bounded_count():
    with pytest.raises(ValueError, match="crop_views"):
        TrainConfig(crop_views=4, hflip=False)
    with pytest.raises(ValueError, match="crop_views"):
        TrainConfig(crop_views=33)


def test_cached_training_with_crop_views_caches_and_trains_on_them(tmp_path, tiny_backbone, ila_config):
    """crop_views=K caches K + 2 views per training image (one per holdout image), the epochs draw from all of
    them, and the LP-FT head still starts from the centre and mirror views only (same start as without crops)."""
    store_path = write_toy_store(tmp_path, num_classes=3, train_per_class=4, holdout_per_class=2)
    with LabelStore.open(store_path) as store:
        data = snapshot(store, tmp_path)
    cfg = TrainConfig(steps=12, batch_size=4, warmup_steps=1, lr=0.05, drop_rate=0.0, use_feature_cache=True,
                      freeze_cls_token=True, lp_init=True, crop_views=3)  # fmt: skip
    plain = FeatureCache(max_memory_mb=64)
    base = fit(prepare_model(tiny_backbone, ila_config, 3, cfg), data, dataclasses.replace(cfg, crop_views=0),
               cache=plain)  # fmt: skip
    cache = FeatureCache(max_memory_mb=64)
    result = fit(prepare_model(tiny_backbone, ila_config, 3, cfg), data, cfg, cache=cache)
    assert result.residency.filled_views == len(data.train) * 5 + len(data.holdout)
    entry = plain.stats()["memory_bytes"] // (len(data.train) * 2 + len(data.holdout))
    assert cache.stats()["memory_bytes"] == entry * (len(data.train) * 5 + len(data.holdout))
    assert result.head_init["cv_top1"] == pytest.approx(base.head_init["cv_top1"])
    assert result.steps == 12 and [r["loss"] for r in result.history] != [r["loss"] for r in base.history]
