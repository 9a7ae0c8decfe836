"""The paper's numbers, asserted exactly: parameters, tokens per block and MACs (ILA_SPEC 1.8, 1.9, 8)."""

from __future__ import annotations

import dataclasses
import functools

import pytest

from ila_core.accounting import stats_for
from ila_core.adapters import method_config
from ila_core.config import BackboneConfig

VIT_B = "vit_base_patch16_224"


@functools.lru_cache(maxsize=None)  # the same configuration is asked for by several tests
def _stats(variant: str, num_classes: int = 100, image_size: int = 224, name: str = VIT_B):
    return stats_for(BackboneConfig(name=name, image_size=image_size, weights="none"), method_config(variant), num_classes)


# trainable = constant + 769 N on ViT-B/16 (spec 1.8 / 8.4); CLS token (768) included
TRAINABLE_CONST = {
    "linear": 768,
    "ila": 41_264,
    "ila+": 174_624,
    "ila++": 354_800,
    "adapter": 314_304,
    "convpass": 328_320,
    "vpt-shallow": 77_568,
    "vpt-deep": 922_368,
}


@pytest.mark.parametrize("variant, const", TRAINABLE_CONST.items())
@pytest.mark.parametrize("num_classes", [80, 200, 1938])
def test_trainable_parameters_vit_b(variant, const, num_classes):
    """Trainable parameters are the spec's constant + 769 N for every method."""
    assert _stats(variant, num_classes).trainable_params == const + 769 * num_classes


@pytest.mark.parametrize(
    "variant, num_classes, expected",
    [("ila++", 80, 416_320), ("ila++", 1110, 1_208_390), ("ila", 198, 193_526), ("ila+", 200, 328_424),
     ("linear", 1938, 1_491_090)],
)  # fmt: skip
def test_spec_table_examples(variant, num_classes, expected):
    """Concrete cells of the spec table (Cotton80, SoyGene, SoyAgeing, SoyLocal, SoyGlobal)."""
    assert _stats(variant, num_classes).trainable_params == expected


@pytest.mark.parametrize("variant, total", [("linear", 85_875_556), ("ila", 85_916_052), ("ila++", 86_229_588)])
def test_total_parameters(variant, total):
    """Total parameters at N=100, 224 px; 448 px adds 451,584 for the larger position table."""
    assert _stats(variant).total_params == total
    assert _stats(variant, image_size=448).total_params == total + 451_584


@pytest.mark.parametrize(
    "image_size, counts", [(224, (197, 145, 101)), (448, (785, 677, 577))]
)
@pytest.mark.parametrize("variant", ["ila", "ila+", "ila++"])
def test_tokens_per_block(variant, image_size, counts):
    """DS-ILAs after blocks 3 and 7: blocks 0-3 / 4-7 / 8-11 see the spec's token counts."""
    tokens = _stats(variant, image_size=image_size).tokens_per_block
    assert tokens == [counts[0]] * 4 + [counts[1]] * 4 + [counts[2]] * 4


def test_plain_vit_tokens_constant():
    """Without ILA every block sees 197 tokens (VPT: 297 with 100 prompts)."""
    assert _stats("linear").tokens_per_block == [197] * 12
    assert _stats("vpt-deep").tokens_per_block == [297] * 12


# MACs in G (torchprofile counts in the paper; we count matmuls and convs): within 1 %
SPEC_MACS = {
    ("linear", 224): 17.567, ("ila", 224): 13.096, ("ila+", 224): 13.114, ("ila++", 224): 13.142,
    ("adapter", 224): 17.629, ("convpass", 224): 17.631, ("vpt-shallow", 224): 26.973, ("vpt-deep", 224): 26.973,
    ("linear", 448): 78.510, ("ila", 448): 66.876, ("ila+", 448): 66.959, ("ila++", 448): 67.089,
    ("adapter", 448): 78.756, ("convpass", 448): 78.766, ("vpt-shallow", 448): 90.083,
}  # fmt: skip


@pytest.mark.parametrize("variant, image_size", SPEC_MACS)
def test_macs_match_paper(variant, image_size):
    """MACs of one forward at batch 1 are within 1 % of the paper's FLOPs (G) column."""
    macs = _stats(variant, image_size=image_size).macs / 1e9
    assert macs == pytest.approx(SPEC_MACS[(variant, image_size)], rel=0.01)


def test_ila_saves_a_quarter_of_the_macs():
    """ILA++ vs ViT: about -25 % MACs at 224 px and -14.5 % at 448 px."""
    for size, saving in ((224, 0.252), (448, 0.145)):
        ratio = _stats("ila++", image_size=size).macs / _stats("linear", image_size=size).macs
        assert 1 - ratio == pytest.approx(saving, abs=0.005)


def test_each_class_adds_768_macs():
    """The head is the only part that grows with N: 768 MACs per class."""
    assert _stats("ila", 101).macs - _stats("ila", 100).macs == 768


# The default backbone (DINOv2 ViT-S/14, D=384, 224 px -> 16x16 grid): one DS-ILA has
# down 3,080 + BNs 48 + DW 80 + PW 72 + CLS 72 + up 3,456 + RSDS 3,456 = 10,264 parameters.
def test_default_backbone_numbers():
    """DINOv2-S at 224: 257 -> 197 -> 145 tokens; ILA trains 2 x 10,264 + 384 + 385 N parameters."""
    ila = _stats("ila", 100, name="vit_small_patch14_dinov2")
    plain = _stats("linear", 100, name="vit_small_patch14_dinov2")
    assert ila.tokens_per_block == [257] * 4 + [197] * 4 + [145] * 4
    assert ila.trainable_params == 2 * 10_264 + 384 + 385 * 100
    assert plain.trainable_params == 384 + 385 * 100
    assert ila.macs / plain.macs < 0.80


def test_stats_ignore_weight_source():
    """Accounting never loads weights: a 'default' weights config gives the same numbers as random init."""
    cfg = BackboneConfig(name="vit_small_patch14_dinov2", image_size=224)
    a = stats_for(cfg, method_config("ila"), 10)
    b = stats_for(dataclasses.replace(cfg, weights="none"), method_config("ila"), 10)
    assert a == b
