"""Injection into timm ViTs: what trains, what stays frozen, validation and adapter state round trips."""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch

from ila_core.adapters import (
    VARIANTS,
    ILABlock,
    ILAConfig,
    adapter_state_dict,
    base_blocks,
    config_from_dict,
    config_to_dict,
    inject,
    load_adapter_state_dict,
    method_config,
    trainable_names,
)
from ila_core.backbone import build_model
from ila_core.config import BackboneConfig

TINY_OVERRIDES = {"ila": {"ds_locations": (1, 3)}, "ila+": {"ds_locations": (1, 3)}, "ila++": {"ds_locations": (1, 3)}}


def _tiny(variant: str, num_classes: int = 3, image_size: int = 96):
    cfg = method_config(variant, **TINY_OVERRIDES.get(variant, {}))
    if variant.startswith("vpt"):
        cfg = dataclasses.replace(cfg, num_prompts=5)
    return build_model(BackboneConfig(name="test_vit", image_size=image_size, weights="none"), cfg, num_classes).model


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_shape_for_every_variant(variant):
    """Every variant keeps timm's forward: (B, num_classes) logits, finite."""
    model = _tiny(variant).eval()
    out = model(torch.randn(2, 3, 96, 96))
    assert out.shape == (2, 3)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "full"])
def test_only_adapters_cls_and_head_get_gradients(variant):
    """After backward, trainable params have gradients and every frozen backbone param has none."""
    model = _tiny(variant).train()
    model(torch.randn(4, 3, 96, 96)).sum().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    names = trainable_names(model)
    assert "cls_token" in names and "head.weight" in names
    frozen_parts = ("patch_embed", "pos_embed", ".attn.qkv", ".mlp.fc1", "norm.weight")
    assert not [n for n in names if any(part in n for part in frozen_parts)]


def test_full_finetune_trains_everything():
    """The full fine-tuning reference makes every parameter trainable."""
    model = _tiny("full")
    assert all(p.requires_grad for p in model.parameters())


def test_block_count_unchanged_and_base_blocks_are_the_originals():
    """Injection wraps blocks in place: same depth, the original timm blocks kept as base_block."""
    model = timm.create_model("test_vit", img_size=96, num_classes=3)
    originals = list(model.blocks)
    inject(model, ILAConfig(ds_locations=(1, 3)))
    assert len(model.blocks) == 6
    assert base_blocks(model) == originals
    assert [isinstance(b, ILABlock) for b in model.blocks] == [False, True, False, True, False, False]


def test_location_outside_depth_names_both():
    """A location past the last block is a ValueError naming the location and the depth."""
    model = timm.create_model("test_vit", img_size=96, num_classes=3)
    with pytest.raises(ValueError, match=r"\[7\].*depth 6"):
        inject(model, ILAConfig(ds_locations=(1, 7)))


def test_grid_shrinking_below_one_names_image_size():
    """At 32 px the 2x2 grid cannot go through two valid 3x3 convs: ValueError naming the image size."""
    model = timm.create_model("test_vit", img_size=32, num_classes=3)
    with pytest.raises(ValueError, match="image size 32"):
        inject(model, ILAConfig(ds_locations=(1, 3)))


def test_inject_twice_is_refused():
    """Injecting into a model that already has adapters is an error, not a silent double wrap."""
    model = timm.create_model("test_vit", img_size=96, num_classes=3)
    inject(model, ILAConfig(ds_locations=(1, 3)))
    with pytest.raises(ValueError, match="already"):
        inject(model, ILAConfig(ds_locations=(1, 3)))


def test_adapter_state_round_trip_reproduces_outputs():
    """Adapter + head tensors loaded into a fresh model reproduce its eval outputs exactly."""
    torch.manual_seed(1)
    a = _tiny("ila++")
    backbone = {k: v for k, v in a.state_dict().items()}
    a.train()
    a(torch.randn(8, 3, 96, 96))  # move BN running stats away from their init
    state = adapter_state_dict(a)
    assert any(k.endswith("running_mean") for k in state)
    b = _tiny("ila++")
    b.load_state_dict({k: v for k, v in backbone.items() if k not in state}, strict=False)
    load_adapter_state_dict(b, state)
    x = torch.randn(2, 3, 96, 96)
    assert torch.equal(a.eval()(x), b.eval()(x))


def test_adapter_state_has_no_frozen_backbone_tensors():
    """The checkpoint holds only what trains plus adapter BN buffers: no qkv, no patch embedding."""
    state = adapter_state_dict(_tiny("ila"))
    assert not [k for k in state if "qkv" in k or "patch_embed" in k or "pos_embed" in k]
    assert "head.weight" in state and "cls_token" in state


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.update({"blocks.0.bogus": torch.zeros(1)}), "unexpected key"),
        (lambda s: s.pop("head.weight"), "lacks key head.weight"),
        (lambda s: s.update({"head.weight": torch.zeros(5, 64)}), "shape mismatch for head.weight"),
    ],
)
def test_load_adapter_state_names_first_problem(edit, message):
    """Unexpected keys, missing keys and wrong shapes are refused with the key named."""
    model = _tiny("ila")
    state = adapter_state_dict(model)
    edit(state)
    with pytest.raises(ValueError, match=message):
        load_adapter_state_dict(_tiny("ila"), state)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_config_dict_round_trip(variant):
    """Configs survive JSON persistence unchanged."""
    cfg = VARIANTS[variant]
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_unknown_variant_is_a_value_error():
    """An unknown variant name lists the valid ones."""
    with pytest.raises(ValueError, match="ila\\+\\+"):
        method_config("ila-pro")


def test_vpt_prompts_are_stripped_after_the_last_block():
    """VPT adds prompt tokens inside the encoder only; the final features keep the original token count."""
    model = _tiny("vpt-deep").eval()
    feats = model.forward_features(torch.randn(1, 3, 96, 96))
    assert feats.shape[1] == 1 + 36


def test_ila_on_registers_model_keeps_all_prefix_tokens():
    """Models with register tokens pass every prefix token through the CLS path (prefix count from the model)."""
    model = timm.create_model("test_vit", img_size=96, num_classes=3, reg_tokens=2, no_embed_class=True)
    inject(model, ILAConfig(ds_locations=(1, 3)))
    feats = model.eval().forward_features(torch.randn(1, 3, 96, 96))
    assert model.num_prefix_tokens == 3
    assert feats.shape[1] == 3 + 2 * 2
