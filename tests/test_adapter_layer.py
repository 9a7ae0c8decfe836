"""The ILA module itself: shapes, parameter counts, initialisation and the order of operations (ILA_SPEC 1.2-1.8)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from ila_core.adapters import ILAConfig, ILAdapter


def _tokens(batch: int = 2, side: int = 6, dim: int = 32, prefix: int = 1) -> torch.Tensor:
    return torch.randn(batch, prefix + side * side, dim)


def test_ds_ila_has_20248_parameters_at_vit_b_width():
    """One DS-ILA on ViT-B (D=768, d=8, k=3) has exactly 20,248 parameters (spec 8.3)."""
    assert sum(p.numel() for p in ILAdapter(768).parameters()) == 20_248


def test_non_ds_ila_has_13336_parameters():
    """A non-down-sampling ILA has no conv shortcut: 13,336 parameters (spec 1.4)."""
    assert sum(p.numel() for p in ILAdapter(768, downsample=False).parameters()) == 13_336


def test_ds_ila_parameter_breakdown():
    """Each part of the DS-ILA has the size listed in the spec table (1.8)."""
    m = ILAdapter(768)
    sizes = {name: sum(p.numel() for p in mod.parameters()) for name, mod in m.named_children()}
    assert sizes == {
        "down": 6152, "norm1": 16, "act": 0, "dwconv": 80, "norm2": 16, "pwconv": 72,
        "prefix_proj": 72, "norm3": 16, "up": 6912, "drop": 0, "shortcut": 6912,
    }  # fmt: skip


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
@pytest.mark.parametrize("bottleneck_dim", [4, 8])
@pytest.mark.parametrize("norm", ["bn", "ln", "none"])
@pytest.mark.parametrize("prefix", [1, 2])
def test_output_token_count(kernel_size, bottleneck_dim, norm, prefix):
    """Output has prefix + (side - k + 1)^2 tokens when down-sampling, the same count otherwise."""
    x = _tokens(side=7, prefix=prefix)
    ds = ILAdapter(32, bottleneck_dim, kernel_size, num_prefix_tokens=prefix, norm=norm)
    same = ILAdapter(32, bottleneck_dim, kernel_size, downsample=False, num_prefix_tokens=prefix, norm=norm)
    assert ds(x).shape == (2, prefix + (7 - kernel_size + 1) ** 2, 32)
    assert same(x).shape == x.shape
    assert torch.isfinite(ds(x)).all()


def test_vit_b_token_counts_through_two_ds_ilas():
    """14x14 -> 12x12 -> 10x10: 197 -> 145 -> 101 tokens, and 785 -> 677 -> 577 at 448 px (spec 8.2)."""
    a, b = ILAdapter(16).eval(), ILAdapter(16).eval()
    for side, expected in ((14, (145, 101)), (28, (677, 577))):
        y1 = a(torch.randn(1, 1 + side * side, 16))
        y2 = b(y1)
        assert (y1.shape[1], y2.shape[1]) == expected


def test_shortcut_init_is_near_ones():
    """The residual depth-wise conv starts at N(1, 0.001): a 3x3 sum, not a mean (spec 1.3)."""
    w = ILAdapter(768).shortcut.weight
    assert w.shape == (768, 1, 3, 3)
    assert abs(w.mean().item() - 1.0) < 1e-3
    assert 0.5e-3 < w.std().item() < 2e-3


def test_residual_sums_patches_and_keeps_cls():
    """With the main branch silenced, a constant patch grid is multiplied by ~9 and the CLS passes unchanged."""
    m = ILAdapter(32).eval()
    with torch.no_grad():
        m.up.weight.zero_()
        m.up.bias.zero_()
    x = torch.ones(1, 1 + 36, 32)
    x[:, 0] = torch.arange(32.0)
    y = m(x)
    assert torch.equal(y[:, 0], x[:, 0])
    assert torch.allclose(y[:, 1:], torch.full_like(y[:, 1:], 9.0), atol=0.05)


def test_non_ds_residual_is_identity():
    """The non-down-sampling ILA adds its main branch to the unchanged input."""
    m = ILAdapter(32, downsample=False).eval()
    with torch.no_grad():
        m.up.weight.zero_()
        m.up.bias.zero_()
    x = _tokens()
    assert torch.equal(m(x), x)


def test_linear_init_follows_paper():
    """Linear layers: Xavier-uniform weights and tiny N(0, 1e-6) biases; no zero-init of the up-projection."""
    m = ILAdapter(768)
    bound = (6 / (768 + 8)) ** 0.5
    for lin in (m.down, m.up):
        assert lin.weight.abs().max() <= bound + 1e-6
        assert lin.weight.abs().max() > bound / 2
        assert lin.bias.abs().max() < 1e-4
    assert m.up.weight.abs().sum() > 0


def test_cls_output_ignores_patches_in_eval():
    """The CLS token is kept aside: in eval mode its output does not depend on the patch tokens (spec 8.7)."""
    m = ILAdapter(32).eval()
    x = _tokens()
    x2 = x.clone()
    x2[:, 1:] += torch.randn_like(x2[:, 1:])
    assert torch.allclose(m(x)[:, 0], m(x2)[:, 0])
    assert not torch.allclose(m(x)[:, 1:], m(x2)[:, 1:])


def test_batchnorm_statistics_include_cls():
    """BN1d before the conv normalises over batch x all tokens, CLS included (spec 8.7)."""
    m = ILAdapter(32).train()
    m.norm1.momentum = 1.0  # running stats = this batch's stats
    x = _tokens(batch=3)
    m(x)
    expected = m.down(x).detach().reshape(-1, 8).mean(0)
    assert torch.allclose(m.norm1.running_mean, expected, atol=1e-5)


def test_forward_matches_spec_pseudocode():
    """The forward equals ILA_SPEC 1.7 written out op by op (the order of spec 8.8)."""
    m = ILAdapter(32).eval()
    x = _tokens(side=6)

    def bn(t, norm):  # eval-mode BatchNorm on the last dim of (B, N, C)
        return F.batch_norm(t.transpose(1, 2), norm.running_mean, norm.running_var, norm.weight, norm.bias).transpose(1, 2)

    t = F.gelu(bn(x @ m.down.weight.T + m.down.bias, m.norm1))
    c, p = t[:, :1], t[:, 1:].transpose(1, 2).reshape(2, 8, 6, 6)
    p = F.conv2d(p, m.dwconv.weight, m.dwconv.bias, groups=8)
    p = F.gelu(F.batch_norm(p, m.norm2.running_mean, m.norm2.running_var, m.norm2.weight, m.norm2.bias))
    p = F.conv2d(p, m.pwconv.weight, m.pwconv.bias).flatten(2).transpose(1, 2)
    c = c @ m.prefix_proj.weight.T + m.prefix_proj.bias
    t = F.gelu(bn(torch.cat([c, p], 1), m.norm3)) @ m.up.weight.T + m.up.bias
    r = F.conv2d(x[:, 1:].transpose(1, 2).reshape(2, 32, 6, 6), m.shortcut.weight, groups=32)
    expected = torch.cat([x[:, :1], r.flatten(2).transpose(1, 2)], 1) + t
    assert torch.allclose(m(x), expected, atol=1e-5)


def test_dropout_active_only_in_train_mode():
    """Dropout 0.1 on the main branch: train-mode outputs vary, eval-mode outputs are deterministic."""
    m = ILAdapter(32)
    x = _tokens()
    m.train()
    assert not torch.equal(m(x), m(x))
    m.eval()
    assert torch.equal(m(x), m(x))


def test_non_square_grid_is_a_clear_error():
    """Patch tokens that do not form a square grid raise ValueError naming the count."""
    with pytest.raises(ValueError, match="35 patch tokens"):
        ILAdapter(32)(torch.randn(1, 36, 32))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kernel_size": 2}, "odd"),
        ({"ds_locations": (-1,)}, "non-negative"),
        ({"ds_locations": (3, 3)}, "duplicates"),
        ({"locations": (3,), "ds_locations": (3,)}, "both"),
        ({"norm": "gn"}, "norm"),
        ({"dropout": 1.5}, "dropout"),
        ({"bottleneck_dim": 0}, "bottleneck"),
    ],
)
def test_bad_configs_raise_value_error(kwargs, message):
    """Invalid ILAConfig fields raise ValueError naming the problem."""
    with pytest.raises(ValueError, match=message):
        ILAConfig(**kwargs)
