"""The paper's backbone and recipe where they differ from timm's defaults (ILA_SPEC 1.5, 1.6, 3; issue 10 section 5).

Checked: ImageNet mean/std for the paper's backbone (timm's ``orig_in21k`` config says 0.5), no dropout on the
MLP hidden layer, VPT-deep prompt dropout 0.1, and the bilinear (``scipy.ndimage.zoom(order=1)``) position grid
resize, from config to built model to a served checkpoint.
"""

from __future__ import annotations

import json

import pytest
import timm
import timm.data
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from torch import nn

from ila_core.adapters import ILAConfig, LinearProbeConfig, method_config
from ila_core.adapters.prompts import PromptTokens
from ila_core.backbone import build_model
from ila_core.checkpoint import CheckpointError, build_reproducible, load_built, manifest_backbone, save_checkpoint
from ila_core.checkpoint.load import check_backbone
from ila_core.config import DEFAULT_BACKBONE, PAPER_BACKBONE, BackboneConfig
from ila_core.pos_embed import resize_pos_embed_bilinear
from ila_core.training.config import PRESETS
from ila_core.training.model_setup import prepare_model
from ila_core.training.transforms import preprocess_for

IMAGENET = (tuple(timm.data.IMAGENET_DEFAULT_MEAN), tuple(timm.data.IMAGENET_DEFAULT_STD))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # timm's config for test_vit and for the paper's orig_in21k weights


def _mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    p = preprocess_for(model, 96)
    return tuple(round(v, 6) for v in p.mean), tuple(round(v, 6) for v in p.std)


def _rounded(pair):
    return tuple(tuple(round(float(v), 6) for v in t) for t in pair)


# -- configuration ------------------------------------------------------------------------------


def test_paper_backbone_resolves_to_the_official_preparation():
    """The paper's backbone gets ImageNet mean/std and bilinear position resizing; others keep timm's."""
    paper = BackboneConfig(name=PAPER_BACKBONE, image_size=448, weights="hub")
    assert (paper.normalization, paper.pos_embed_resize) == ("imagenet", "bilinear")
    default = BackboneConfig()
    assert default.name == DEFAULT_BACKBONE
    assert (default.normalization, default.pos_embed_resize) == ("timm", "timm")
    explicit = BackboneConfig(name=PAPER_BACKBONE, weights="hub", normalization="timm", pos_embed_resize="timm")
    assert (explicit.normalization, explicit.pos_embed_resize) == ("timm", "timm")


@pytest.mark.parametrize("field", ["normalization", "pos_embed_resize"])
def test_unknown_preparation_is_rejected(field):
    """A misspelt choice raises ValueError instead of silently meaning timm's behaviour."""
    with pytest.raises(ValueError, match=field):
        BackboneConfig(name="test_vit", weights="none", **{field: "nearest"})


# -- normalisation ------------------------------------------------------------------------------


def test_imagenet_normalization_replaces_timm_config():
    """normalization='imagenet' reaches preprocess_for through the model's data config; 'timm' keeps 0.5."""
    ila = ILAConfig(ds_locations=(1, 3))
    timm_model = build_model(BackboneConfig(name="test_vit", image_size=96, weights="none"), ila, 3).model
    assert _mean_std(timm_model) == _rounded(HALF)
    cfg = BackboneConfig(name="test_vit", image_size=96, weights="none", normalization="imagenet")
    assert _mean_std(build_model(cfg, ila, 3).model) == _rounded(IMAGENET)


def test_paper_backbone_builds_with_imagenet_normalization_and_no_mlp_hidden_dropout():
    """The paper's ViT-B/16 (random init, paper preset's dropout) normalises like the official code and drops
    only after the attention projection and the MLP."""
    model = build_model(BackboneConfig(name=PAPER_BACKBONE, weights="none"), ILAConfig(), 3,
                        drop_rate=PRESETS["paper"].drop_rate).model  # fmt: skip
    assert timm.create_model(PAPER_BACKBONE, pretrained=False).pretrained_cfg["mean"] == HALF[0]
    assert _mean_std(model) == _rounded(IMAGENET)
    for block in model.blocks:
        block = getattr(block, "base_block", block)
        assert isinstance(block.mlp.drop1, nn.Identity)
        assert block.attn.proj_drop.p == pytest.approx(0.1) and block.mlp.drop2.p == pytest.approx(0.1)
    assert model.blocks[0].norm1.eps == 1e-6  # timm's (and JAX's) epsilon, kept; the official code has 1e-12


def test_normalization_survives_a_checkpoint_round_trip(tmp_path):
    """A checkpoint records the normalisation; the served model rebuilt from it uses the same one."""
    cfg = BackboneConfig(name="test_vit", image_size=96, weights="none", normalization="imagenet")
    built = build_reproducible(cfg, ILAConfig(ds_locations=(1, 3)), 3)
    info = save_checkpoint(built, tmp_path / "v1.safetensors", class_names=["a", "b", "c"])
    assert info.manifest["backbone"]["normalization"] == "imagenet"
    assert info.manifest["backbone"]["pos_embed_resize"] == "timm"
    served, manifest = load_built(info.path, tmp_path)
    assert served.backbone == cfg
    assert _mean_std(served.model) == _rounded(IMAGENET)


def test_old_manifest_means_timm_preparation(tmp_path):
    """Manifests written before the fields existed rebuild with timm's behaviour, even for the paper's backbone."""
    old = {"backbone": {"name": PAPER_BACKBONE, "image_size": 448, "weights": "hub"}}
    b = manifest_backbone(old)
    assert (b.normalization, b.pos_embed_resize) == ("timm", "timm")


def test_check_backbone_refuses_other_normalization(tmp_path):
    """Loading a checkpoint onto a backbone prepared differently fails, naming the field."""
    built = build_reproducible(BackboneConfig(name="test_vit", image_size=96, weights="none"),
                               ILAConfig(ds_locations=(1, 3)), 3)  # fmt: skip
    info = save_checkpoint(built, tmp_path / "v1.safetensors", class_names=["a", "b", "c"])
    manifest = json.loads(info.manifest_path.read_text())
    manifest["backbone"]["normalization"] = "imagenet"
    with pytest.raises(CheckpointError, match="normalization"):
        check_backbone(manifest, built)


# -- dropout ------------------------------------------------------------------------------------


def test_mlp_hidden_layer_is_never_dropped(tiny_backbone, ila_config):
    """timm's proj_drop_rate would also drop after the MLP activation (mlp.drop1); the official blocks do not."""
    built = prepare_model(tiny_backbone, ila_config, 3, PRESETS["paper"])
    blocks = [getattr(b, "base_block", b) for b in built.model.blocks]
    assert all(isinstance(b.mlp.drop1, nn.Identity) for b in blocks)
    assert all(b.mlp.drop2.p == pytest.approx(0.1) and b.attn.proj_drop.p == pytest.approx(0.1) for b in blocks)
    assert all(b.attn.attn_drop.p == 0.0 for b in blocks)  # attention-probability dropout is 0 (ILA_SPEC 1.6)


def test_vpt_deep_prompts_use_dropout_01():
    """VPT-deep's per-block prompts get the official 0.1 dropout in train mode and none in eval mode."""
    assert method_config("vpt-deep").dropout == pytest.approx(0.1)
    assert method_config("vpt-shallow").dropout == 0.0
    model = build_model(BackboneConfig(name="test_vit", image_size=96, weights="none"),
                        method_config("vpt-deep", num_prompts=50), 3).model  # fmt: skip
    prompts = [m for m in model.modules() if isinstance(m, PromptTokens)]
    assert len(prompts) == len(model.blocks) and all(p.dropout == pytest.approx(0.1) for p in prompts)
    p = prompts[0]
    p.train()
    zeros = (p.expand(4) == 0).float().mean().item()
    assert 0.05 < zeros < 0.15  # about 10 % of 4 x 50 x 64 entries dropped
    p.eval()
    assert torch.equal(p.expand(2)[0], p.tokens[0])


def test_vpt_dropout_out_of_range_is_rejected():
    """A prompt dropout of 1 or more raises ValueError."""
    with pytest.raises(ValueError, match="dropout"):
        method_config("vpt-deep", dropout=1.0)


# -- position embedding -------------------------------------------------------------------------


def test_bilinear_resize_aligns_corners_and_keeps_cls():
    """Corner entries stay, the midpoint of a 2x2 -> 3x3 zoom is the mean, the CLS entry is untouched."""
    grid = torch.tensor([[0.0, 2.0], [4.0, 6.0]]).reshape(1, 4, 1)
    table = torch.cat([torch.full((1, 1, 1), -7.0), grid], dim=1)
    out = resize_pos_embed_bilinear(table, (3, 3), num_prefix_tokens=1)
    assert out[0, 0, 0] == -7.0
    expected = torch.tensor([[0.0, 1.0, 2.0], [2.0, 3.0, 4.0], [4.0, 5.0, 6.0]])
    assert torch.allclose(out[0, 1:, 0].reshape(3, 3), expected)
    assert torch.equal(resize_pos_embed_bilinear(table, (2, 2), 1), table)  # same grid: unchanged


@pytest.mark.parametrize(("old", "new"), [(14, 28), (10, 16), (7, 5)])
def test_bilinear_resize_matches_scipy_zoom_order_1(old, new):
    """Same values as the official code's scipy.ndimage.zoom(order=1), unlike timm's bicubic resample."""
    ndimage = pytest.importorskip("scipy.ndimage")
    table = torch.randn(1, 1 + old * old, 32)
    ours = resize_pos_embed_bilinear(table, (new, new), num_prefix_tokens=1)
    grid = table[0, 1:].reshape(old, old, 32).double().numpy()
    zoomed = ndimage.zoom(grid, (new / old, new / old, 1), order=1)
    assert zoomed.shape == (new, new, 32)
    assert torch.allclose(ours[0, 1:], torch.from_numpy(zoomed).float().reshape(new * new, 32), atol=1e-6)
    assert torch.equal(ours[:, :1], table[:, :1])
    bicubic = resample_abs_pos_embed(table, [new, new], num_prefix_tokens=1)
    assert not torch.allclose(ours, bicubic, atol=1e-3)


@pytest.fixture
def tiny_weights(tmp_path):
    """A safetensors file of timm test_vit keys at its native 160 px (10x10 position grid)."""
    torch.manual_seed(1)
    state = timm.create_model("test_vit", pretrained=False, num_classes=0).state_dict()
    path = tmp_path / "test_vit.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path, state


@pytest.mark.parametrize("image_size", [160, 256])
def test_pretrained_pos_embed_is_resized_bilinearly(tiny_weights, image_size):
    """Loading weights at another size zooms the position grid bilinearly; every other tensor loads as is."""
    path, state = tiny_weights
    cfg = BackboneConfig(name="test_vit", image_size=image_size, weights="file", weights_file=path,
                         pos_embed_resize="bilinear")  # fmt: skip
    loaded = build_model(cfg, LinearProbeConfig(), 3).model.state_dict()
    side = image_size // 16
    assert torch.equal(loaded["pos_embed"], resize_pos_embed_bilinear(state["pos_embed"], (side, side), 1))
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if k != "pos_embed")


def test_timm_pos_embed_resize_stays_bicubic(tiny_weights):
    """pos_embed_resize='timm' (every backbone but the paper's) keeps timm's own resample."""
    path, state = tiny_weights
    cfg = BackboneConfig(name="test_vit", image_size=256, weights="file", weights_file=path)
    assert cfg.pos_embed_resize == "timm"
    model = build_model(cfg, LinearProbeConfig(), 3).model
    assert torch.allclose(model.pos_embed, resample_abs_pos_embed(state["pos_embed"], [16, 16], num_prefix_tokens=1))
    assert not torch.allclose(model.pos_embed, resize_pos_embed_bilinear(state["pos_embed"], (16, 16), 1), atol=1e-4)
