"""Tests for the procedural leaf cultivar generator (ila_core.data.synthetic)."""

from __future__ import annotations

import colorsys
import random
from dataclasses import replace

import numpy as np
import pytest

from ila_core.data.synthetic import (
    CultivarTraits,
    SyntheticConfig,
    cultivar_names,
    cultivar_traits,
    generate,
    render_leaf,
    write_demo_set,
)

SMALL = SyntheticConfig(num_cultivars=8, image_size=64, seed=0)
# Thresholds keep wide margins around what seeds 0-5 measure (chance = 1/8); the tests use seed 0.
# bench/synthetic_probe.py measures the full-size numbers (224 px, frozen DINOv2 features).
MEAN_COLOUR_MAX = 0.3  # measured 0.11-0.19
RAW_PIXEL_MAX = 0.4  # measured 0.06-0.25 over penalties 0.01-100
TRAIT_MIN = 0.6  # measured 0.85-0.94


def _arrays(config: SyntheticConfig, per_class: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images as (N, H, W, 3) uint8 and their class indices."""
    index = {name: k for k, name in enumerate(cultivar_names(config))}
    pairs = list(generate(config, per_class, start_index=start))
    return np.stack([np.asarray(img) for _, img in pairs]), np.array([index[name] for name, _ in pairs])


def _ridge_accuracy(train_x, train_y, test_x, test_y, num_classes: int, lam: float) -> float:
    """Test accuracy of a one-vs-all ridge classifier on standardised features (closed form, dual)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
    targets = np.eye(num_classes)[train_y]
    targets -= targets.mean(0)
    gram = xtr @ xtr.T
    dual = np.linalg.solve(gram + lam * np.trace(gram) / len(gram) * np.eye(len(gram)), targets)
    return float(((xte @ xtr.T @ dual).argmax(1) == test_y).mean())


def _nearest_centroid_accuracy(train_x, train_y, test_x, test_y, num_classes: int) -> float:
    """Test accuracy of a nearest-class-mean classifier on standardised features."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
    centroids = np.stack([xtr[train_y == k].mean(0) for k in range(num_classes)])
    dist = ((xte[:, None, :] - centroids[None]) ** 2).sum(-1)
    return float((dist.argmin(1) == test_y).mean())


def test_same_seed_gives_identical_bytes():
    """Two runs with the same config produce byte-identical images."""
    first = [img.tobytes() for _, img in generate(SMALL, 2)]
    second = [img.tobytes() for _, img in generate(SMALL, 2)]
    assert first == second


def test_different_seed_gives_different_images():
    """Another seed changes every image."""
    first = [img.tobytes() for _, img in generate(SMALL, 1)]
    other = [img.tobytes() for _, img in generate(replace(SMALL, seed=1), 1)]
    assert all(a != b for a, b in zip(first, other, strict=True))


def test_start_index_continues_the_stream():
    """generate(n) equals generate(1) followed by generate(n - 1, start_index=1)."""
    whole = [(n, img.tobytes()) for n, img in generate(SMALL, 3)]
    parts = [(n, img.tobytes()) for n, img in generate(SMALL, 1)]
    parts += [(n, img.tobytes()) for n, img in generate(SMALL, 2, start_index=1)]
    assert whole == parts


def test_images_are_rgb_at_requested_size():
    """Every image is RGB and image_size square."""
    config = replace(SMALL, image_size=48, num_cultivars=3)
    images = [img for _, img in generate(config, 2)]
    assert len(images) == 6
    assert {img.mode for img in images} == {"RGB"}
    assert {img.size for img in images} == {(48, 48)}


def test_render_leaf_leaves_global_rng_state_alone():
    """Rendering draws only from the given generator, never from numpy's or Python's global state."""
    np_state, py_state = np.random.get_state(), random.getstate()
    traits = cultivar_traits(SMALL)[0]
    a = render_leaf(traits, np.random.default_rng(5), 32)
    b = render_leaf(traits, np.random.default_rng(5), 32)
    assert a.tobytes() == b.tobytes()
    assert random.getstate() == py_state
    assert all(np.array_equal(x, y) for x, y in zip(np.random.get_state(), np_state, strict=True))


@pytest.mark.parametrize("num_cultivars", [2, 8, 40])
def test_cultivar_names_are_unique_and_counted(num_cultivars):
    """One unique, path-safe name and one trait set per cultivar."""
    config = replace(SMALL, num_cultivars=num_cultivars)
    names = cultivar_names(config)
    assert len(names) == len(set(names)) == num_cultivars
    assert all(name.replace("-", "").isalnum() for name in names)
    assert len(cultivar_traits(config)) == num_cultivars
    assert cultivar_names(config) == names


def test_difficulty_scales_trait_gaps():
    """Halving difficulty halves the spread of every trait across cultivars (same layout, same seed)."""
    easy = np.array([list(vars(t).values()) for t in cultivar_traits(SMALL)])
    hard = np.array([list(vars(t).values()) for t in cultivar_traits(replace(SMALL, difficulty=0.5))])
    np.testing.assert_allclose(hard.std(0), easy.std(0) / 2, rtol=1e-6)
    assert (easy.std(0) > 0).all()


@pytest.mark.parametrize(
    "kwargs",
    [{"num_cultivars": 1}, {"image_size": 8}, {"seed": -1}, {"difficulty": 0.0}, {"difficulty": 3.0},
     {"nuisance": -0.1}, {"supersample": 0}],
)  # fmt: skip
def test_config_rejects_bad_values(kwargs):
    """Out-of-range settings raise ValueError."""
    with pytest.raises(ValueError):
        SyntheticConfig(**kwargs)


def test_traits_reject_out_of_range_values():
    """A trait outside its physical range raises ValueError."""
    traits = cultivar_traits(SMALL)[0]
    with pytest.raises(ValueError, match="serration_depth"):
        replace(traits, serration_depth=0.9)
    assert isinstance(traits, CultivarTraits)


def test_mean_colour_does_not_identify_the_cultivar():
    """Nuisance dominates the per-image mean colour: a nearest-centroid classifier on it is near chance."""
    config = replace(SMALL, image_size=32)
    train_x, train_y = _arrays(config, 16)
    test_x, test_y = _arrays(config, 16, start=16)
    acc = _nearest_centroid_accuracy(
        train_x.reshape(len(train_x), -1, 3).mean(1), train_y, test_x.reshape(len(test_x), -1, 3).mean(1), test_y, 8
    )
    assert acc < MEAN_COLOUR_MAX


def test_linear_probe_on_raw_pixels_stays_weak():
    """A ridge classifier on raw pixels stays far below perfect on held-out images (chance is 1/8)."""
    train_x, train_y = _arrays(SMALL, 12)
    test_x, test_y = _arrays(SMALL, 8, start=12)
    flat = lambda x: x.reshape(len(x), -1).astype(np.float64) / 255  # noqa: E731
    acc = _ridge_accuracy(flat(train_x), train_y, flat(test_x), test_y, 8, lam=1.0)
    assert acc < RAW_PIXEL_MAX


def _measured_traits(image: np.ndarray) -> list[float]:
    """Hand measurements on a nuisance-free render (upright leaf on plain grey): the designed traits' proxies."""
    rgb = image.astype(np.float64) / 255
    leaf = np.abs(rgb - 128 / 255).max(-1) > 0.04
    rows, cols = np.nonzero(leaf)
    widths = leaf.sum(1)[rows.min() : rows.max() + 1]
    aspect = (rows.max() - rows.min() + 1) / widths.max()
    # margin roughness: how often the blade's right edge steps in and out from one row to the next
    right = np.array([np.nonzero(r)[0].max() for r in leaf[rows.min() : rows.max() + 1] if r.any()])
    roughness = np.abs(np.diff(right, 2)).mean()
    hues = [colorsys.rgb_to_hsv(*p)[0] for p in rgb[leaf][:: max(1, leaf.sum() // 400)]]
    texture = rgb[leaf].mean(-1).std()
    return [aspect, roughness, float(np.median(hues)), texture]


def test_designed_traits_separate_the_cultivars():
    """Without nuisance, a nearest-centroid classifier on hand-measured trait proxies is well above chance."""
    config = replace(SMALL, image_size=96, nuisance=0.0)
    train_x, train_y = _arrays(config, 6)
    test_x, test_y = _arrays(config, 6, start=6)
    features = lambda x: np.array([_measured_traits(img) for img in x])  # noqa: E731
    acc = _nearest_centroid_accuracy(features(train_x), train_y, features(test_x), test_y, 8)
    assert acc > TRAIT_MIN


def test_write_demo_set_writes_an_imagefolder_tree(tmp_path):
    """train/ and holdout/ hold one folder per cultivar; pool/ holds unlabelled images."""
    config = SyntheticConfig(num_cultivars=3, image_size=32, seed=2)
    out = write_demo_set(tmp_path / "demo", config, train_per_class=2, holdout_per_class=1, pool_per_class=1)
    names = cultivar_names(config)
    assert out == tmp_path / "demo"
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(names)
    assert all(len(list((out / "train" / n).glob("*.png"))) == 2 for n in names)
    assert all(len(list((out / "holdout" / n).glob("*.png"))) == 1 for n in names)
    pool = sorted((out / "pool").glob("*.png"))
    assert len(pool) == 3
    assert not any(n.split("-")[0].lower() in p.name.lower() for p in pool for n in names)
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temporary folder left behind


def test_write_demo_set_refuses_a_non_empty_folder(tmp_path):
    """An existing non-empty output folder is never overwritten."""
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        write_demo_set(tmp_path / "demo", SMALL, train_per_class=1, holdout_per_class=0, pool_per_class=0)
    assert (tmp_path / "demo" / "keep.txt").read_text() == "mine"
