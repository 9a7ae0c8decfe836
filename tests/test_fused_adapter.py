"""The inference (BatchNorm-folded) ILA adapter equals the eval-mode adapter and is what serving runs."""

from __future__ import annotations

import pytest
import torch

from ila_core.adapters import FusedILAdapter, ILABlock, ILAdapter, fuse_for_inference, method_config
from ila_core.backbone import build_model


def _trained_stats(adapter: ILAdapter, seed: int = 0) -> ILAdapter:
    """Non-trivial running statistics and affine parameters, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (adapter.norm1, adapter.norm2, adapter.norm3):
            if isinstance(bn, torch.nn.Identity):
                continue
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) * 2 + 0.3)
            bn.weight.copy_(torch.randn(bn.num_features, generator=g) * 0.3 + 1)
            bn.bias.copy_(torch.randn(bn.num_features, generator=g))
        adapter.up.weight.normal_(generator=g)  # the paper init makes the main branch tiny; exercise it
    return adapter.eval()


@pytest.mark.parametrize("downsample", [True, False])
@pytest.mark.parametrize("norm", ["bn", "none"])
@pytest.mark.parametrize("prefix", [1, 5])
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_equals_eval_adapter(downsample, norm, prefix, batch):
    adapter = _trained_stats(ILAdapter(48, 8, 3, downsample=downsample, num_prefix_tokens=prefix, norm=norm))
    fused = FusedILAdapter.from_adapter(adapter)
    x = torch.randn(batch, prefix + 36, 48)
    with torch.no_grad():
        ref, out = adapter(x), fused(x)
    assert out.shape == ref.shape == (batch, prefix + (16 if downsample else 36), 48)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_fused_kernel_5_and_gradients_flow_to_the_input():
    adapter = _trained_stats(ILAdapter(32, 4, 5, downsample=True))
    fused = FusedILAdapter.from_adapter(adapter)
    x = torch.randn(2, 1 + 49, 32, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    fused(x).square().sum().backward()  # Grad-CAM differentiates through the served model
    adapter(x_ref).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-4)


def test_fusing_needs_eval_mode_and_refuses_training():
    adapter = ILAdapter(32, 4, 3)
    with pytest.raises(ValueError, match="eval mode"):
        FusedILAdapter.from_adapter(adapter)
    fused = FusedILAdapter.from_adapter(adapter.eval())
    with pytest.raises(RuntimeError, match="inference-only"):
        fused.train()
    assert list(fused.parameters()) == []  # buffers only: nothing an optimiser could pick up


def test_layernorm_adapters_are_left_unfused():
    adapter = ILAdapter(32, 4, 3, norm="ln").eval()
    with pytest.raises(ValueError, match="LayerNorm"):
        FusedILAdapter.from_adapter(adapter)


def test_fuse_for_inference_keeps_model_logits(tiny_backbone):
    torch.manual_seed(0)
    model = build_model(tiny_backbone, method_config("ila++", ds_locations=(1, 3)), num_classes=5).model
    for module in model.modules():
        if isinstance(module, ILAdapter):
            _trained_stats(module)
    model.eval()
    x = torch.randn(2, 3, tiny_backbone.image_size, tiny_backbone.image_size)
    with torch.no_grad():
        ref = model(x)
    adapters = sum(isinstance(m, ILAdapter) for m in model.modules())
    assert fuse_for_inference(model) == adapters > 0
    assert not any(isinstance(m, ILAdapter) for m in model.modules())
    assert all(isinstance(b.adapter, FusedILAdapter) for b in model.blocks if isinstance(b, ILABlock))
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-5)


def test_fuse_for_inference_refuses_a_training_model(tiny_backbone):
    model = build_model(tiny_backbone, method_config("ila", ds_locations=(1, 3)), num_classes=3).model.train()
    with pytest.raises(ValueError, match="eval mode"):
        fuse_for_inference(model)
