"""Closed-form ridge probe: CV alpha choice, group-aware folds, folded standardisation and temperature."""

from __future__ import annotations

import math

import pytest
import torch

from ila_core.training.probe import FALLBACK_ALPHA, ProbeFit, _cv_scores, _fit_temperature, assign_folds, fit_probe


def _clusters(n: int, dim: int, classes: int, *, sep: float, noise: float = 0.0, seed: int = 0, nuisance: float = 0.0,
              offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Gaussian class clusters; ``noise`` = fraction of labels redrawn at random; ``nuisance`` = rank-3 shared noise."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, dim, generator=g) * sep
    y = torch.randint(classes, (n,), generator=g)
    x = means[y] + torch.randn(n, dim, generator=g) + offset
    if nuisance:
        x = x + torch.randn(n, 3, generator=g) @ (torch.randn(3, dim, generator=g) * nuisance)
    flip = torch.rand(n, generator=g) < noise
    return x, torch.where(flip, torch.randint(classes, (n,), generator=g), y)


def _naive_ridge(x: torch.Tensor, y: torch.Tensor, query: torch.Tensor, classes: int, alpha: float) -> torch.Tensor:
    """The textbook solve the probe must match: standardise, centred one-hot targets, (Z'Z + n alpha I) W = Z'Y."""
    mu, std = x.mean(0), x.std(0, correction=0)
    z = (x - mu) / std
    onehot = torch.nn.functional.one_hot(y, classes).double()
    penalty = len(z) * alpha * torch.eye(z.shape[1], dtype=z.dtype)
    w = torch.linalg.solve(z.T @ z + penalty, z.T @ (onehot - onehot.mean(0)))
    return (query - mu) / std @ w + onehot.mean(0)


def test_separable_problem_recovered() -> None:
    """Well-separated clusters: out-of-fold and training top-1 are both 1.0."""
    x, y = _clusters(400, 32, 6, sep=3.0, offset=5.0)
    fit = fit_probe(x, y, 6)
    assert fit.cv_top1 == 1.0
    assert (fit.logits(x).argmax(1) == y).all()
    assert fit.weight.shape == (6, 32) and fit.bias.shape == (6,)
    assert fit.weight.dtype == fit.bias.dtype == torch.float32
    assert fit.alpha == max(a for a, s in fit.cv_scores.items() if s == 1.0)  # ties go to the smoother model


def test_logits_match_to_linear() -> None:
    """The head applied by ProbeFit.logits and by the exported nn.Linear is the same function."""
    x, y = _clusters(300, 24, 4, sep=0.5, noise=0.2)
    fit = fit_probe(x, y, 4)
    layer = fit.to_linear()
    assert isinstance(layer, torch.nn.Linear) and (layer.in_features, layer.out_features) == (24, 4)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), fit.logits(x))
    layer.weight.data.zero_()  # a copy: editing the layer leaves the fit alone
    assert fit.weight.abs().sum() > 0


@pytest.mark.parametrize("n,dim", [(200, 30), (60, 100)])  # primal (n >= D) and dual (n < D) solves
def test_matches_naive_ridge(n: int, dim: int) -> None:
    """Per-fold scores for every alpha and the refitted head equal a direct solve (folded T, centring and scale)."""
    x, y = _clusters(n, dim, 4, sep=0.4, offset=7.0)
    x = x.double() * torch.linspace(0.5, 4.0, dim, dtype=torch.float64)
    fold = assign_folds(y, 5)
    grid = torch.tensor([1e-3, 1.0], dtype=x.dtype)
    oof, _ = _cv_scores(x - x.mean(0), y, fold, 4, grid)
    for f in range(int(fold.max()) + 1):
        for i, alpha in enumerate(grid.tolist()):
            expected = _naive_ridge(x[fold != f], y[fold != f], x[fold == f], 4, alpha)
            torch.testing.assert_close(oof[fold == f, i], expected, rtol=1e-9, atol=1e-9)
    fit = fit_probe(x.float(), y, 4)
    expected = fit.temperature * _naive_ridge(x.float().double(), y, x.float().double(), 4, fit.alpha)
    torch.testing.assert_close(fit.logits(x.float()).double(), expected, rtol=1e-4, atol=1e-4 * expected.abs().max())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_noise_raises_alpha(seed: int) -> None:
    """Same features, 70 % of labels redrawn: CV picks a stronger ridge than with clean labels."""
    clean = fit_probe(*_clusters(1000, 80, 4, sep=0.5, seed=seed, nuisance=3.0), 4)
    noisy = fit_probe(*_clusters(1000, 80, 4, sep=0.5, noise=0.7, seed=seed, nuisance=3.0), 4)
    assert noisy.alpha > clean.alpha
    assert noisy.cv_top1 < clean.cv_top1


def test_folds_keep_groups_together_and_stratify() -> None:
    """Every group lies in one fold; each fold holds every class; fold sizes differ by at most one group."""
    g = torch.Generator().manual_seed(3)
    images = 97
    image_label = torch.randint(5, (images,), generator=g)
    groups = torch.cat([torch.arange(images), torch.arange(images)])[torch.randperm(2 * images, generator=g)]
    labels = image_label[groups]  # an image and its flip: same group, same label, anywhere in the array
    fold = assign_folds(labels, 5, groups=groups * 11 + 3, seed=1)  # arbitrary group ids
    assert (fold >= 0).all() and int(fold.max()) == 4
    per_group = torch.full((images,), -1).scatter_reduce(0, groups, fold, reduce="amax")
    assert (fold == per_group[groups]).all()
    for f in range(5):
        assert set(labels[fold == f].tolist()) == set(range(5))
    sizes = torch.bincount(per_group, minlength=5)
    assert int(sizes.max() - sizes.min()) <= 1
    assert torch.equal(fold, assign_folds(labels, 5, groups=groups * 11 + 3, seed=1))
    assert not torch.equal(fold, assign_folds(labels, 5, groups=groups * 11 + 3, seed=2))


def test_folds_for_small_sets() -> None:
    """Single-group classes stay in training (-1); folds shrink to the groups available; no CV -> all -1."""
    labels = torch.tensor([0, 0, 1, 1, 2])
    fold = assign_folds(labels, 5)
    assert fold[4] == -1 and int(fold.max()) == 3 and sorted(fold[:4].tolist()) == [0, 1, 2, 3]
    assert (assign_folds(torch.tensor([0, 0, 1, 2]), 5) == -1).all()  # only one class has two groups
    assert (assign_folds(torch.tensor([0, 0, 1, 1]), 5, groups=torch.tensor([0, 0, 1, 1])) == -1).all()


def test_groups_stop_duplicate_leakage() -> None:
    """With duplicated samples, CV without groups is fooled by memorisation; with groups it stays honest."""
    x, y = _clusters(150, 200, 3, sep=0.1, noise=0.5, seed=4)
    x2, y2 = torch.cat([x, x + 1e-3 * torch.randn_like(x)]), torch.cat([y, y])
    groups = torch.cat([torch.arange(150), torch.arange(150)])
    leaky = fit_probe(x2, y2, 3, alphas=(1e-4,))
    honest = fit_probe(x2, y2, 3, alphas=(1e-4,), groups=groups)
    assert leaky.cv_top1 > 0.75  # each held-out sample's near-twin was trained on
    assert honest.cv_top1 < 0.55  # chance is 1/3; the clusters barely differ


def test_fp16_features() -> None:
    """Half-precision features give a float32 head equal to the one fitted on the same values in float32."""
    x, y = _clusters(300, 48, 4, sep=0.6, noise=0.1)
    half = fit_probe(x.half(), y, 4)
    full = fit_probe(x.half().float(), y, 4)
    assert half.weight.dtype == torch.float32 and torch.isfinite(half.weight).all()
    torch.testing.assert_close(half.weight, full.weight)
    torch.testing.assert_close(half.logits(x.half()), full.logits(x.half().float()))


def test_tiny_set_falls_back() -> None:
    """One sample per class: no CV, the documented default alpha, temperature 1 and cv_top1 = nan."""
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    fit = fit_probe(x, torch.tensor([0, 1, 2]), 3)
    assert math.isnan(fit.cv_top1) and fit.cv_scores == {}
    assert fit.alpha == FALLBACK_ALPHA and fit.temperature == 1.0
    assert (fit.logits(x).argmax(1) == torch.tensor([0, 1, 2])).all()


def test_two_per_class_cross_validates_with_fewer_folds() -> None:
    """Two samples per class are enough for (2-fold) CV."""
    x = torch.tensor([[0.0, 0.0], [0.1, 0.2], [5.0, 5.0], [5.2, 4.9]])
    fit = fit_probe(x, torch.tensor([0, 0, 1, 1]), 2, folds=5)
    assert fit.cv_top1 == 1.0 and len(fit.cv_scores) == len(set(fit.cv_scores))


def test_absent_class_never_predicted() -> None:
    """A class without samples gets a bias below every logit it competes with, on data and on noise."""
    x, y = _clusters(200, 16, 4, sep=0.3, noise=0.3)
    fit = fit_probe(x, y, 6)  # classes 4 and 5 have no samples
    probe = torch.cat([x, 3 * torch.randn(1000, 16, generator=torch.Generator().manual_seed(1))])
    assert fit.logits(probe).argmax(1).max() < 4
    assert (fit.weight[4:] == 0).all() and torch.isfinite(fit.bias).all()
    assert (fit.logits(probe).softmax(1)[:, 4:] < 1e-6).all()


@pytest.mark.parametrize(
    "features,labels,num_classes,kwargs,match",
    [
        (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 3, {}, "zero samples"),
        (torch.randn(5, 4), torch.ones(5, dtype=torch.long), 3, {}, "at least two classes"),
        (torch.randn(4, 4), torch.tensor([0, 1, 2, 3]), 3, {}, r"\[0, 3\)"),
        (torch.randn(4, 4), torch.tensor([0, 1, -1, 1]), 3, {}, r"\[0, 3\)"),
        (torch.randn(4), torch.tensor([0, 1, 0, 1]), 2, {}, r"\(N, D\)"),
        (torch.randn(4, 4), torch.tensor([0.0, 1.0, 0.0, 1.0]), 2, {}, "integer"),
        (torch.randn(4, 4), torch.tensor([0, 1, 0, 1]), 1, {}, "num_classes"),
        (torch.randn(4, 4), torch.tensor([0, 1, 0, 1]), 2, {"groups": torch.zeros(3, dtype=torch.long)}, "groups"),
        (torch.randn(4, 4), torch.tensor([0, 1, 0, 1]), 2, {"folds": 1}, "folds"),
        (torch.randn(4, 4), torch.tensor([0, 1, 0, 1]), 2, {"alphas": (1.0, 0.0)}, "alphas"),
        (torch.randn(4, 4), torch.tensor([0, 1, 0, 1]), 2, {"alphas": ()}, "alphas"),
        (torch.tensor([[0.0, float("nan")]] * 4), torch.tensor([0, 1, 0, 1]), 2, {}, "NaN"),
    ],
)
def test_bad_input_raises(features, labels, num_classes, kwargs, match) -> None:
    """Bad shapes, dtypes, labels and settings raise ValueError with a message that names the problem."""
    with pytest.raises(ValueError, match=match):
        fit_probe(features, labels, num_classes, **kwargs)


def test_temperature_calibrates_noisy_problem() -> None:
    """On held-out data of a noisy problem the mean max-probability tracks the accuracy (within 0.15)."""
    x, y = _clusters(4000, 32, 5, sep=0.3, noise=0.3, seed=5)
    fit = fit_probe(x[:2000], y[:2000], 5)
    probs = fit.logits(x[2000:]).softmax(1)
    accuracy = float((probs.argmax(1) == y[2000:]).float().mean())
    assert 0.3 < accuracy < 0.9  # the problem is neither trivial nor hopeless
    assert abs(float(probs.max(1).values.mean()) - accuracy) < 0.15
    assert 1e-2 <= fit.temperature <= 1e3


def test_temperature_search_finds_the_minimum() -> None:
    """The golden-section T is at least as good as the best of a dense log grid over the same range."""
    g = torch.Generator().manual_seed(6)
    scores, y = torch.randn(500, 7, generator=g).double(), torch.randint(7, (500,), generator=g)
    scores[torch.arange(500), y] += 0.3

    def nll(t: float) -> float:
        return float(torch.nn.functional.cross_entropy(t * scores, y))

    best_grid = min(nll(t) for t in torch.logspace(-2, 3, 2000).tolist())
    assert nll(_fit_temperature(scores, y)) <= best_grid + 1e-9


def test_deterministic_for_seed() -> None:
    """The same inputs and seed give the same head, alpha, temperature and CV scores."""
    x, y = _clusters(500, 40, 5, sep=0.4, noise=0.2)
    groups = torch.arange(500) // 2
    a, b = (fit_probe(x, y, 5, groups=groups, seed=7) for _ in range(2))
    assert isinstance(a, ProbeFit)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert (a.alpha, a.temperature, a.cv_top1, a.cv_scores) == (b.alpha, b.temperature, b.cv_top1, b.cv_scores)
