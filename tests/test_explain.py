"""Explanations: attention recorder, ILA-aware rollout, Grad-CAM through the grid probe, contrast maps, overlays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from ila_core.adapters import ILAConfig, LinearProbeConfig, ParallelAdapterConfig, VPTConfig, base_blocks
from ila_core.backbone import build_model
from ila_core.config import BackboneConfig
from ila_core.explain import (
    EXPLAINERS,
    AttentionRecorder,
    attention_rollout,
    attribution_outside_mask,
    contrast_cam,
    explain,
    grad_cam,
    grid_probe,
    leaf_mask,
    otsu_threshold,
    overlay,
    rollout_stages,
)
from ila_core.explain.space import backproject, bridge_matrix

SIZE = 96  # conftest's TINY_SIZE: grids 6 -> 4 -> 2 with DS-ILAs after blocks 1 and 3


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _fused(model: torch.nn.Module) -> list[bool]:
    return [blk.attn.fused_attn for blk in base_blocks(model)]


def _quadrant(maps: torch.Tensor) -> torch.Tensor:
    """Index of the quadrant holding the most mass: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right."""
    h, w = maps.shape[-2] // 2, maps.shape[-1] // 2
    parts = [maps[..., :h, :w], maps[..., :h, w:], maps[..., h:, :w], maps[..., h:, w:]]
    return torch.stack([p.sum(dim=(-1, -2)) for p in parts], dim=-1).argmax(dim=-1)


def test_recorder_captures_softmax_maps_with_ila_token_counts(tiny_vit):
    """Each block's map is (B, heads, N, N) with rows summing to 1, and N shrinks after each DS-ILA."""
    tiny_vit.eval()
    with AttentionRecorder(tiny_vit) as rec:
        tiny_vit(torch.randn(2, 3, SIZE, SIZE))
    maps = rec.ordered()
    assert [m.shape[-1] for m in maps] == [37, 37, 17, 17, 5, 5]
    assert all(m.shape[:2] == (2, 2) for m in maps)
    for m in maps:
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]))


def test_recorder_restores_hooks_and_fused_attention(tiny_vit):
    """Hooks are removed and fused_attn is back to its old value after the context exits."""
    before_hooks, before_fused = _hooks(tiny_vit), _fused(tiny_vit)
    with AttentionRecorder(tiny_vit, blocks=[0, 4]):
        assert _fused(tiny_vit) == [False, True, True, True, False, True]  # only the chosen blocks
        assert _hooks(tiny_vit) == before_hooks + 2
    assert _hooks(tiny_vit) == before_hooks
    assert _fused(tiny_vit) == before_fused


def test_recorder_restores_after_an_exception(tiny_vit):
    """An exception inside the context still removes hooks and restores fused attention."""
    before_hooks, before_fused = _hooks(tiny_vit), _fused(tiny_vit)
    with pytest.raises(RuntimeError, match="boom"), AttentionRecorder(tiny_vit):
        raise RuntimeError("boom")
    assert _hooks(tiny_vit) == before_hooks
    assert _fused(tiny_vit) == before_fused


def test_recorder_rejects_bad_block_index(tiny_vit):
    """A block index outside the model is a ValueError."""
    with pytest.raises(ValueError, match="outside"):
        AttentionRecorder(tiny_vit, blocks=[6])


def test_rollout_rows_sum_to_one_within_each_stage(tiny_vit):
    """Stages follow the token counts, and every stage rollout (and the chain) is row-stochastic."""
    res = attention_rollout(tiny_vit, torch.randn(2, 3, SIZE, SIZE))
    assert [s.blocks for s in res.stages] == [(0, 1), (2, 3), (4, 5)]
    assert res.stage_sides == [6, 4, 2]
    for stage in res.stages:
        torch.testing.assert_close(stage.rollout.sum(-1), torch.ones(stage.rollout.shape[:-1], dtype=torch.float64))
    assert res.chain.shape == (2, 5, 37)
    torch.testing.assert_close(res.chain.sum(-1), torch.ones(2, 5, dtype=torch.float64))


def test_rollout_maps_have_image_shape_and_unit_range(tiny_vit):
    """Stage and combined maps are (B, H, W) in [0, 1] with a maximum of 1."""
    res = attention_rollout(tiny_vit, torch.randn(3, 3, SIZE, SIZE))
    for m in [*res.stage_maps, res.combined]:
        assert m.shape == (3, SIZE, SIZE)
        assert float(m.min()) >= 0.0 and float(m.max()) == pytest.approx(1.0)


def test_rollout_stages_of_identity_attention_is_identity():
    """With attention equal to the identity, the rollout is the identity whatever the residual weight."""
    eye = torch.eye(5).expand(1, 2, 5, 5)
    (stage,) = rollout_stages([eye, eye, eye], residual=0.3)
    torch.testing.assert_close(stage.rollout[0], torch.eye(5, dtype=torch.float64))


def test_rollout_leaves_model_mode_and_attention_alone(tiny_vit):
    """Rollout restores train mode, hooks and fused attention."""
    tiny_vit.train()
    before_hooks, before_fused = _hooks(tiny_vit), _fused(tiny_vit)
    attention_rollout(tiny_vit, torch.randn(1, 3, SIZE, SIZE))
    assert tiny_vit.training
    assert _hooks(tiny_vit) == before_hooks and _fused(tiny_vit) == before_fused


def test_bridge_rows_match_backprojection():
    """The bridge matrix and the conv-transpose back-projection agree and keep mass."""
    grid = torch.rand(1, 4, 4)
    via_conv = backproject(grid, [6, 4])
    m = bridge_matrix(1, 6, 4)
    via_matrix = (torch.cat([torch.zeros(1, 1), grid.flatten(1)], 1) @ m)[:, 1:].reshape(1, 6, 6)
    torch.testing.assert_close(via_conv, via_matrix)
    torch.testing.assert_close(via_conv.sum(), grid.sum())
    torch.testing.assert_close(m.sum(1), torch.ones(m.shape[0]))


def test_gradcam_grid_is_the_last_grid_and_map_the_image(tiny_vit):
    """Grad-CAM's raw map has the last block's grid side (after two DS-ILAs), the output the image size."""
    res = grad_cam(tiny_vit, torch.randn(2, 3, SIZE, SIZE), target=1)
    assert res.grid.shape == (2, 2, 2)
    assert res.sides == [6, 4, 2]
    assert res.maps.shape == (2, SIZE, SIZE)
    assert float(res.maps.min()) >= 0.0 and float(res.maps.max()) <= 1.0
    assert res.targets.tolist() == [1, 1]


def test_gradcam_works_on_a_fully_frozen_model(tiny_vit):
    """With no parameter requiring grad the map is still non-trivial (captum makes the probe need grad)."""
    tiny_vit.requires_grad_(False)
    res = grad_cam(tiny_vit, torch.randn(2, 3, SIZE, SIZE))
    assert float(res.grid.abs().sum()) > 0
    assert all(p.grad is None for p in tiny_vit.parameters())


def test_gradcam_restores_the_model(tiny_vit):
    """The probe is gone, the modules are the originals and the train flag is restored."""
    tiny_vit.train()
    blocks, norm1 = list(tiny_vit.blocks), base_blocks(tiny_vit)[-1].norm1
    grad_cam(tiny_vit, torch.randn(1, 3, SIZE, SIZE))
    assert list(tiny_vit.blocks) == blocks and base_blocks(tiny_vit)[-1].norm1 is norm1
    assert tiny_vit.training


def test_grid_probe_restores_after_an_exception(tiny_vit):
    """An exception inside grid_probe still puts the original module back."""
    norm1 = base_blocks(tiny_vit)[-1].norm1
    with pytest.raises(KeyError), grid_probe(tiny_vit):
        assert base_blocks(tiny_vit)[-1].norm1 is not norm1
        raise KeyError("x")
    assert base_blocks(tiny_vit)[-1].norm1 is norm1


def test_grid_probe_does_not_change_the_logits(tiny_vit):
    """The probe passes tokens on unchanged."""
    tiny_vit.eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        plain = tiny_vit(x)
        with grid_probe(tiny_vit):
            probed = tiny_vit(x)
    torch.testing.assert_close(plain, probed)


@pytest.mark.parametrize(
    "method",
    [
        LinearProbeConfig(),
        VPTConfig(num_prompts=3, deep=True),
        ParallelAdapterConfig(),
        ILAConfig(ds_locations=(1, 3), parallel_adapters=True),
    ],
    ids=["linear", "vpt-deep", "adapter", "ila++"],
)
def test_explainers_run_on_other_methods(tiny_backbone, method):
    """Every explainer gives an image-sized map in [0, 1] for models with prompts or parallel adapters."""
    model = build_model(tiny_backbone, method, num_classes=3).model
    for name in EXPLAINERS:
        exp = explain(model, torch.randn(3, SIZE, SIZE), method=name)
        assert exp.heatmap.shape == (SIZE, SIZE) and exp.heatmap.dtype == np.float32
        assert 0.0 <= exp.heatmap.min() and exp.heatmap.max() <= 1.0


def test_contrast_defaults_to_top1_vs_runner_up(tiny_vit):
    """The contrast explains the top-1 class against the runner-up of the same forward."""
    tiny_vit.eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        top2 = tiny_vit(x).topk(2, dim=1).indices[0].tolist()
    exp = explain(tiny_vit, x, method="contrast")
    assert [exp.target, exp.other] == top2
    assert exp.method == "contrast" and exp.heatmap.shape == (SIZE, SIZE)


def test_contrast_rejects_equal_classes(tiny_vit):
    """Contrasting a class with itself is a ValueError."""
    with pytest.raises(ValueError, match="different"):
        contrast_cam(tiny_vit, torch.randn(1, 3, SIZE, SIZE), target=1, other=1)


def test_explain_rejects_unknown_method_and_batches(tiny_vit):
    """explain() takes one image and a known method."""
    with pytest.raises(ValueError, match="unknown explanation method"):
        explain(tiny_vit, torch.randn(3, SIZE, SIZE), method="lime")
    with pytest.raises(ValueError, match="one image"):
        explain(tiny_vit, torch.randn(2, 3, SIZE, SIZE), method="gradcam")


def test_rollout_explanation_reports_stages(tiny_vit):
    """The rollout explanation carries one map per stage with the stage grid sides."""
    exp = explain(tiny_vit, torch.randn(3, SIZE, SIZE), method="rollout")
    assert exp.stage_sides == (6, 4, 2) and len(exp.stage_maps) == 3
    assert exp.target is None and exp.logits.shape == (3,)


def test_overlay_returns_rgb_image_of_photo_size():
    """The overlay is RGB at the photo's size, whatever the heatmap's size and the photo's mode."""
    photo = Image.new("L", (120, 80), 128)
    out = overlay(photo, np.random.default_rng(0).random((24, 24)), cmap="inferno", alpha=0.45)
    assert out.mode == "RGB" and out.size == (120, 80)


def test_overlay_alpha_zero_is_the_photo():
    """alpha=0 leaves the photo unchanged; a bad alpha is a ValueError."""
    photo = Image.new("RGB", (32, 32), (10, 200, 30))
    assert np.array_equal(np.asarray(overlay(photo, np.ones((32, 32)), alpha=0.0)), np.asarray(photo))
    with pytest.raises(ValueError):
        overlay(photo, np.ones((32, 32)), alpha=1.5)


def _leaf_photo(background: tuple[int, int, int] = (235, 235, 235)) -> Image.Image:
    """A green leaf ellipse centred at (row 50, col 40) on a noisy background (light paper by default)."""
    rng = np.random.default_rng(0)
    arr = np.array(background, dtype=np.int16) + rng.integers(-8, 9, (100, 100, 3))
    yy, xx = np.mgrid[:100, :100]
    leaf = ((yy - 50) / 35.0) ** 2 + ((xx - 40) / 20.0) ** 2 <= 1.0
    arr[leaf] = (60, 140, 50)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def test_leaf_mask_finds_a_green_leaf_on_paper():
    """The mask covers the leaf ellipse and not the paper."""
    mask = leaf_mask(_leaf_photo())
    assert mask.shape == (100, 100)
    assert mask[50, 40] and not mask[5, 95]
    assert 0.15 < mask.mean() < 0.3  # ellipse area pi*35*20 ~ 22 %


def test_leaf_mask_of_a_uniform_image_is_everything():
    """Without a clear split the whole frame counts as leaf (no false background warning)."""
    assert leaf_mask(Image.new("RGB", (50, 50), (128, 128, 128))).all()


def test_attribution_outside_mask_fractions():
    """Mass fully inside gives 0, fully outside 1, half and half 0.5; an empty map gives 0."""
    mask = np.zeros((10, 10), dtype=bool)
    mask[:, :5] = True
    heat = np.zeros((10, 10))
    heat[:, :5] = 1.0
    assert attribution_outside_mask(heat, mask) == 0.0
    assert attribution_outside_mask(1.0 - heat, mask) == 1.0
    assert attribution_outside_mask(np.ones((10, 10)), mask) == pytest.approx(0.5)
    assert attribution_outside_mask(np.zeros((10, 10)), mask) == 0.0
    assert attribution_outside_mask(np.ones((20, 20)), mask) == pytest.approx(0.5)  # mask resized


def test_otsu_splits_two_levels():
    """Otsu's threshold falls between two well separated levels."""
    values = np.array([20] * 50 + [200] * 50)
    assert 20 <= otsu_threshold(values) < 200


# --- sanity: trained on synthetic images, both methods look at the object -----------------------------

_SANITY_SIZE = 128  # 8x8 patch grid -> 6x6 -> 4x4: Grad-CAM's last grid still resolves quadrants


def _square_images(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise with one bright square near the centre of a random quadrant; the class is the square's colour."""
    size, sq, half = _SANITY_SIZE, _SANITY_SIZE // 4, _SANITY_SIZE // 2
    x = torch.randn(n, 3, size, size, generator=generator) * 0.5
    cls = torch.randint(0, 3, (n,), generator=generator)
    quad = torch.randint(0, 4, (n,), generator=generator)
    off = (half - sq) // 2 + torch.randint(-4, 5, (n, 2), generator=generator)
    for i in range(n):
        r, c = (int(quad[i]) // 2) * half + int(off[i, 0]), (int(quad[i]) % 2) * half + int(off[i, 1])
        x[i, int(cls[i]), r : r + sq, c : c + sq] += 3.0
    return x, cls, quad


@pytest.fixture(scope="module")
def square_model():
    """test_vit + two DS-ILAs, fine-tuned for 200 steps on the square task (seeded, one thread, ~20 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the model is tiny; more threads only contend on a shared machine
    try:
        torch.manual_seed(0)
        backbone = BackboneConfig(name="test_vit", image_size=_SANITY_SIZE, weights="none")
        model = build_model(backbone, ILAConfig(ds_locations=(1, 3)), num_classes=3).model
        model.requires_grad_(True)  # a random backbone has no useful attention; let it learn where to look
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
        gen = torch.Generator().manual_seed(1)
        model.train()
        for _ in range(200):
            x, y, _ = _square_images(32, gen)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        x, y, quad = _square_images(16, torch.Generator().manual_seed(100))
        with torch.no_grad():
            accuracy = float((model(x).argmax(1) == y).float().mean())
        yield model, x, y, quad, accuracy
    finally:
        torch.set_num_threads(threads)


def test_sanity_model_learned_the_task(square_model):
    """The sanity model classifies the held-out squares (otherwise the map checks mean nothing)."""
    assert square_model[4] >= 0.9


def test_sanity_gradcam_puts_most_mass_on_the_square(square_model):
    """Grad-CAM of the true class has most of its mass in the square's quadrant for nearly every image."""
    model, x, y, quad, _ = square_model
    hits = (_quadrant(grad_cam(model, x, y).maps) == quad).float().mean()
    assert float(hits) >= 0.8


def test_sanity_rollout_puts_most_mass_on_the_square(square_model):
    """The default (last-stage) and the end-to-end chained rollout have most mass in the square's quadrant."""
    model, x, _, quad, _ = square_model
    for combine in ("last", "chain"):
        res = attention_rollout(model, x, combine=combine)
        assert float((_quadrant(res.combined) == quad).float().mean()) >= 0.8, combine


def test_probe_after_last_block_sees_no_gradient_with_cls_pooling(tiny_vit):
    """Why the probe wraps norm1: with CLS pooling the last block's output patch tokens get zero gradient."""
    from captum.attr import LayerGradCam

    from ila_core.explain import ClassScore, GridProbe

    tiny_vit.eval()
    last = tiny_vit.blocks[-1]
    probe = GridProbe(tiny_vit.num_prefix_tokens)
    tiny_vit.blocks[-1] = torch.nn.Sequential(last, probe)
    try:
        attr = LayerGradCam(ClassScore(tiny_vit, 0), probe.grid).attribute(torch.randn(2, 3, SIZE, SIZE), target=0)
    finally:
        tiny_vit.blocks[-1] = last
    assert float(attr.detach().abs().max()) == 0.0
    assert float(grad_cam(tiny_vit, torch.randn(2, 3, SIZE, SIZE), target=0).grid.abs().max()) > 0.0


def test_average_pooled_model_probes_the_last_output_and_reads_all_patches():
    """Without a CLS token (avg pooling) Grad-CAM probes the block output and rollout averages patch rows."""
    import timm

    from ila_core.adapters import inject

    model = timm.create_model(
        "test_vit", pretrained=False, img_size=SIZE, num_classes=3, class_token=False, global_pool="avg"
    )
    inject(model, ILAConfig(ds_locations=(1, 3)))
    assert model.num_prefix_tokens == 0
    blocks = list(model.blocks)
    cam = grad_cam(model, torch.randn(2, 3, SIZE, SIZE))
    assert cam.grid.shape == (2, 2, 2) and float(cam.grid.abs().sum()) > 0
    assert list(model.blocks) == blocks
    res = attention_rollout(model, torch.randn(2, 3, SIZE, SIZE))
    assert res.stage_sides == [6, 4, 2] and res.combined.shape == (2, SIZE, SIZE)


def test_leaf_mask_ignores_brown_soil_and_distrusts_a_green_frame():
    """Brown soil is background; a mask that would cover the border (green backdrop) becomes the whole frame."""
    mask = leaf_mask(_leaf_photo(background=(150, 90, 50)))
    assert mask[50, 40] and not mask[5, 95]
    assert 0.15 < mask.mean() < 0.3
    backdrop = np.full((100, 100, 3), (90, 220, 60), dtype=np.uint8)
    backdrop[30:70, 30:70] = (120, 120, 120)  # a grey object on bright green
    assert leaf_mask(Image.fromarray(backdrop)).all()
