"""A closed-form ridge classifier on frozen embeddings, its penalty chosen by k-fold CV on the training split.

The head regresses one-hot targets on standardised features with a fitted (unpenalised) intercept. The
penalty is per sample: it minimises ``mean ||y - z W - b||^2 + alpha ||W||^2``, i.e. solves
``(Z^T Z + n alpha I) W = Z^T Y``, so one alpha means the same smoothing for a 4,000-sample fold and for
the 5,000-sample refit, and the defaults suit any N (standardised features make ``Z^T Z / n`` average 1 on
the diagonal). Each fold takes one eigendecomposition (the D x D scatter when the fold has at least D
samples, else its n x n kernel) and scores every alpha from it, so ten alphas cost about one solve.

Folds are built from groups (every view of one image shares a group) and stratified by class, and the
standardisation is recomputed inside each training fold, so nothing about a held-out sample reaches the
model that scores it. The winning alpha (best out-of-fold top-1; ties go to the larger, smoother alpha)
is refitted on all samples, and one temperature, fitted by NLL on the out-of-fold scores, turns the ridge
scores into probabilities. Standardisation and temperature are folded into the returned weight and bias.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["DEFAULT_ALPHAS", "FALLBACK_ALPHA", "ProbeFit", "assign_folds", "fit_probe"]

_logger = logging.getLogger(__name__)

DEFAULT_ALPHAS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)
FALLBACK_ALPHA = 1.0  # used when there are too few samples to cross-validate: moderate smoothing
_T_RANGE = (1e-2, 1e3)  # temperature search bounds
_STD_FLOOR = 1e-6  # relative to the largest feature std: constant features are centred to 0, not blown up
_ABSENT_MARGIN = 1e4  # classes without samples sit this far below the lowest training logit (finite: fp16-safe)


@dataclass(frozen=True)
class ProbeFit:
    """A linear head fitted in closed form on frozen features: logits = x @ weight.T + bias."""

    weight: torch.Tensor  # (C, D) float32 on raw features; standardisation and temperature folded in
    bias: torch.Tensor  # (C,) float32
    alpha: float  # the ridge strength chosen by cross-validation (per sample, see the module docstring)
    temperature: float  # the logit scale chosen on out-of-fold scores (folded into weight and bias)
    cv_top1: float  # pooled out-of-fold top-1 at alpha (nan when there were too few samples to cross-validate)
    cv_scores: dict[float, float]  # alpha -> out-of-fold top-1 (empty without cross-validation)
    seconds: float  # wall time of fit_probe

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits (B, C) for raw features (B, D) of any float dtype."""
        x = features.to(dtype=self.weight.dtype)
        return torch.nn.functional.linear(x, self.weight.to(x.device), self.bias.to(x.device))

    def to_linear(self) -> torch.nn.Linear:
        """An ``nn.Linear(D, C)`` holding a copy of weight and bias (e.g. a model's classifier)."""
        num_classes, dim = self.weight.shape
        layer = torch.nn.Linear(dim, num_classes, device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(self.weight)
            layer.bias.copy_(self.bias)
        return layer


def assign_folds(
    labels: torch.Tensor, folds: int, *, groups: torch.Tensor | None = None, seed: int = 0
) -> torch.Tensor:
    """Group-aware, class-stratified fold index per sample.

    A group's class is that of its first sample (views of one image share a label). Groups are shuffled with
    ``seed``, sorted by class and dealt round-robin, so each class is spread evenly over the folds and the folds
    hold about equally many groups. A class with a single group cannot be held out without vanishing from the
    training split, so its samples get -1 (always trained on, never scored). The number of folds drops to the
    number of groups that can be held out when that is smaller; when fewer than two classes have two groups,
    cross-validation is impossible and every sample gets -1.

    Args:
        labels: (N,) integer class ids.
        folds: wanted number of folds (>= 2).
        groups: (N,) integer group ids, or None for one group per sample.
        seed: shuffling seed; the same inputs and seed give the same folds.

    Returns:
        (N,) int64 fold ids in ``[0, k)`` or -1; the number of folds used is ``int(result.max()) + 1`` (0 if none).
    """
    n = labels.numel()
    gid = torch.arange(n) if groups is None else torch.unique(groups.cpu(), return_inverse=True)[1]
    num_groups = int(gid.max()) + 1 if n else 0
    first = torch.full((num_groups,), n, dtype=torch.long).scatter_reduce(0, gid, torch.arange(n), reduce="amin")
    glabel = labels.cpu().long()[first]  # (G,)
    per_class = torch.bincount(glabel)
    eligible = per_class[glabel] >= 2  # (G,) groups whose class keeps another group in training
    out = torch.full((n,), -1, dtype=torch.long)
    if int((per_class >= 2).sum()) < 2:
        return out
    k = min(folds, int(eligible.sum()))
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_groups, generator=gen)
    order = order[eligible[order]]
    order = order[torch.sort(glabel[order], stable=True).indices]  # by class, random within a class
    gfold = torch.full((num_groups,), -1, dtype=torch.long)
    offset = int(torch.randint(k, (1,), generator=gen))  # so fold 0 is not always the one with the extras
    gfold[order] = (torch.arange(order.numel()) + offset) % k
    return gfold[gid].to(labels.device)


def _validate(features: torch.Tensor, labels: torch.Tensor, num_classes: int, groups: torch.Tensor | None,
              alphas: Sequence[float], folds: int) -> tuple[float, ...]:  # fmt: skip
    if features.ndim != 2 or not features.is_floating_point():
        raise ValueError(f"features must be a float (N, D) tensor, got {tuple(features.shape)} {features.dtype}")
    n = features.shape[0]
    if n == 0:
        raise ValueError("fit_probe needs at least one sample per class for two classes; got zero samples")
    if labels.shape != (n,) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer (N,) = ({n},) tensor, got {tuple(labels.shape)} {labels.dtype}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{lo}, {hi}]")
    if torch.unique(labels).numel() < 2:
        raise ValueError(f"fit_probe needs samples of at least two classes; all {n} samples are class {lo}")
    if groups is not None and (groups.shape != (n,) or groups.is_floating_point()):
        raise ValueError(f"groups must be an integer (N,) = ({n},) tensor, got {tuple(groups.shape)} {groups.dtype}")
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    grid = tuple(sorted({float(a) for a in alphas}))
    if not grid or not all(math.isfinite(a) and a > 0 for a in grid):
        raise ValueError(f"alphas must be a non-empty sequence of positive finite numbers, got {list(alphas)}")
    return grid


@dataclass(frozen=True)
class _Stats:
    """Sufficient statistics of a set of (pre-centred) rows: training stats of a fold = total minus its part."""

    n: int
    sum: torch.Tensor  # (D,)
    gram: torch.Tensor | None  # (D, D) raw x^T x; None where only the dual (kernel) solve is used
    class_sums: torch.Tensor  # (C, D)
    counts: torch.Tensor  # (C,) float

    @classmethod
    def of(cls, x: torch.Tensor, y: torch.Tensor, num_classes: int, with_gram: bool) -> _Stats:
        sums = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, y, x)
        counts = torch.bincount(y, minlength=num_classes).to(x.dtype)
        return cls(len(x), x.sum(0), x.T @ x if with_gram else None, sums, counts)

    def __add__(self, other: _Stats) -> _Stats:
        gram = None if self.gram is None or other.gram is None else self.gram + other.gram
        return _Stats(self.n + other.n, self.sum + other.sum, gram, self.class_sums + other.class_sums,
                      self.counts + other.counts)  # fmt: skip

    def __sub__(self, other: _Stats) -> _Stats:
        gram = None if self.gram is None or other.gram is None else self.gram - other.gram
        return _Stats(self.n - other.n, self.sum - other.sum, gram, self.class_sums - other.class_sums,
                      self.counts - other.counts)  # fmt: skip


def _floor(std: torch.Tensor) -> torch.Tensor:
    return std.clamp_min(_STD_FLOOR * max(float(std.max()), 1e-30))


def _ridge_primal(st: _Stats, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ridge weights (A, D, C) on standardised features for every alpha, from one D x D eigendecomposition."""
    mu = st.sum / st.n
    scatter = st.gram - st.n * torch.outer(mu, mu)  # centred; the rows are pre-centred, so this does not cancel
    std = _floor((scatter.diagonal().clamp_min(0) / st.n).sqrt())
    a = scatter / torch.outer(std, std)
    b = (st.class_sums.T - torch.outer(mu, st.counts)) / std[:, None]  # Z^T (Y - ybar): (D, C)
    if len(grid) == 1:  # the refit: one linear solve is several times cheaper than an eigendecomposition
        eye = torch.eye(len(a), dtype=a.dtype, device=a.device)
        return torch.linalg.solve(a + st.n * grid[0] * eye, b)[None], mu, std
    lam, vec = torch.linalg.eigh(a)
    shrink = 1.0 / (lam.clamp_min(0)[None, :] + st.n * grid[:, None])  # (A, D)
    return vec @ ((vec.T @ b)[None] * shrink[:, :, None]), mu, std


def _ridge_dual(x: torch.Tensor, y: torch.Tensor, num_classes: int,
                grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """The same weights from the n x n kernel, for n < D: W = Z^T (Z Z^T + n alpha I)^-1 (Y - ybar)."""
    n = len(x)
    mu = x.mean(0)
    std = _floor(x.std(0, correction=0))
    z = (x - mu) / std
    onehot = torch.nn.functional.one_hot(y, num_classes).to(x.dtype)
    lam, vec = torch.linalg.eigh(z @ z.T)
    shrink = 1.0 / (lam.clamp_min(0)[None, :] + n * grid[:, None])  # (A, n)
    return z.T @ (vec @ ((vec.T @ (onehot - onehot.mean(0)))[None] * shrink[:, :, None])), mu, std


def _ridge(x: torch.Tensor, y: torch.Tensor, st: _Stats, num_classes: int,
           grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Weights (A, D, C) and intercepts (A, C) on pre-centred raw rows, standardisation folded in."""
    if st.gram is not None and st.n >= x.shape[1]:
        w, mu, std = _ridge_primal(st, grid)
    else:
        w, mu, std = _ridge_dual(x, y, num_classes, grid)
    w = w / std[:, None]
    return w, st.counts / st.n - mu @ w


def _cv_scores(xc: torch.Tensor, y: torch.Tensor, fold: torch.Tensor, num_classes: int,
               grid: torch.Tensor) -> tuple[torch.Tensor, _Stats]:  # fmt: skip
    """Out-of-fold scores (N, A, C) for every alpha (rows with fold -1 stay zero) and the all-sample stats.

    The D x D Gram of each validation part is computed once; their sum (plus the never-held-out rows) is the
    total, and a fold's training Gram is the total minus its part, so no training Gram is formed from scratch.
    """
    k = int(fold.max()) + 1
    with_gram = len(xc) >= xc.shape[1]
    parts = [_Stats.of(xc[fold == f], y[fold == f], num_classes, with_gram) for f in range(k)]
    total = _Stats.of(xc[fold < 0], y[fold < 0], num_classes, with_gram)
    for part in parts:
        total = total + part
    oof = torch.zeros(len(xc), len(grid), num_classes, dtype=xc.dtype, device=xc.device)
    for f, part in enumerate(parts):
        val = fold == f
        train = total - part
        w, b = _ridge(xc[~val], y[~val], train, num_classes, grid)  # (A, D, C), (A, C)
        dim, a, c = w.shape[1], len(grid), num_classes
        scores = (xc[val] @ w.permute(1, 0, 2).reshape(dim, a * c)).view(-1, a, c) + b  # one GEMM for all alphas
        oof[val] = scores.masked_fill(train.counts == 0, float("-inf"))  # absent from training: never predicted
    return oof, total


def _fit_temperature(scores: torch.Tensor, y: torch.Tensor) -> float:
    """T minimising the NLL of softmax(T * scores): golden-section search on log T within _T_RANGE.

    The NLL is convex in T, hence unimodal in log T; 25 steps shrink the 11.5-wide log bracket to ~6e-5.
    """
    scores = scores.contiguous()
    target = float(scores.gather(1, y[:, None]).mean())

    def nll(log_t: float) -> float:
        t = math.exp(log_t)
        return float(torch.logsumexp(t * scores, 1).mean()) - t * target

    lo, hi = math.log(_T_RANGE[0]), math.log(_T_RANGE[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(25):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return math.exp((lo + hi) / 2)


def fit_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
              alphas: Sequence[float] = DEFAULT_ALPHAS, folds: int = 5, groups: torch.Tensor | None = None,
              seed: int = 0) -> ProbeFit:  # fmt: skip
    """Fit a ridge classifier head on frozen features, alpha by k-fold CV, plus a softmax temperature.

    Computation runs in float64 on the features' device; the head is float32 on that device. Without enough
    data to cross-validate (see :func:`assign_folds`) the head uses ``FALLBACK_ALPHA``, temperature 1 (scores
    of a one-hot ridge are within about [0, 1], so probabilities stay deliberately unconfident) and
    ``cv_top1 = nan``. Classes in ``[0, num_classes)`` without samples get a bias far below every training
    logit, so they are not predicted.

    Args:
        features: (N, D) float features (fp16, bf16 or fp32), e.g. pooled frozen-backbone embeddings.
        labels: (N,) integer class ids in ``[0, num_classes)``.
        num_classes: number of output classes C.
        alphas: ridge strengths to try (per-sample scale, see the module docstring).
        folds: wanted number of CV folds; fewer are used when there are too few groups.
        groups: (N,) group ids; samples sharing one (e.g. an image and its flip) always share a fold.
        seed: fold-shuffling seed; results are deterministic for a given seed.

    Returns:
        The fitted :class:`ProbeFit`.

    Raises:
        ValueError: on zero samples, a single class, labels out of range, mis-shaped groups, non-finite
            features, ``folds < 2`` or non-positive alphas.
    """
    t0 = time.perf_counter()
    grid = _validate(features, labels, num_classes, groups, alphas, folds)
    device = features.device
    y = labels.to(device=device, dtype=torch.long)
    x = features.to(torch.float64)
    x0 = x.mean(0)
    if not bool(torch.isfinite(x0).all()):  # a NaN/inf anywhere in a column reaches its mean
        raise ValueError("features contain NaN or infinite values")
    xc = x - x0  # global pre-centring keeps the Gram-minus-mean updates free of cancellation

    fold = assign_folds(y, folds, groups=groups, seed=seed).to(device)
    k = int(fold.max()) + 1
    if k >= 2:
        grid_t = torch.tensor(grid, dtype=x.dtype, device=device)
        oof, total = _cv_scores(xc, y, fold, num_classes, grid_t)
        scored = fold >= 0
        oof, ys = oof[scored], y[scored]
        correct = (oof.argmax(2) == ys[:, None]).sum(0).tolist()  # integer counts: exact tie detection
        best = max(range(len(grid)), key=lambda i: (correct[i], grid[i]))  # ties -> the larger alpha
        alpha, cv_top1 = grid[best], correct[best] / ys.numel()
        cv_scores = {a: c / ys.numel() for a, c in zip(grid, correct)}
        temperature = _fit_temperature(oof[:, best], ys)
    else:
        total = _Stats.of(xc, y, num_classes, with_gram=len(xc) >= xc.shape[1])
        alpha, cv_top1, cv_scores, temperature = FALLBACK_ALPHA, math.nan, {}, 1.0
        _logger.info("fit_probe: too few samples or groups per class to cross-validate; alpha=%g", alpha)

    alpha_t = torch.tensor([alpha], dtype=x.dtype, device=device)
    w, b = _ridge(xc, y, total, num_classes, alpha_t)  # (1, D, C), (1, C) on pre-centred rows
    weight = temperature * w[0].T  # (C, D)
    bias = temperature * (b[0] - x0 @ w[0])  # fold the pre-centring into the intercept
    counts = total.counts
    absent = counts == 0
    if bool(absent.any()):
        lowest = float((x @ weight[~absent].T + bias[~absent]).min())
        bias = bias.masked_fill(absent, lowest - _ABSENT_MARGIN)
    seconds = time.perf_counter() - t0
    _logger.debug("fit_probe: N=%d D=%d folds=%d alpha=%g T=%.3g cv_top1=%.4f in %.2fs", x.shape[0], x.shape[1], k,
                  alpha, temperature, cv_top1, seconds)  # fmt: skip
    return ProbeFit(weight=weight.float().contiguous(), bias=bias.float(), alpha=alpha, temperature=temperature,
                    cv_top1=cv_top1, cv_scores=cv_scores, seconds=seconds)  # fmt: skip
