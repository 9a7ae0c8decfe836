"""Nearest confirmed images and the calibrated "unlike the confirmed images" score."""

from __future__ import annotations

import torch

from ila_core.embeddings import ConfirmedIndex, normalise_rows


def _clusters(n_per: int = 20, dim: int = 16, seed: int = 0, noise: float = 0.3) -> tuple[torch.Tensor, list[str]]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, 2 * dim, generator=g) * 3
    rows = torch.cat([centres[c] + noise * torch.randn(n_per, 2 * dim, generator=g) for c in range(3)])
    return rows, [f"c{c}" for c in range(3) for _ in range(n_per)]


def test_nearest_per_cultivar_and_exclude():
    """Per cultivar, best first; the query image itself is never its own exemplar."""
    rows, labels = _clusters()
    ids = list(range(100, 100 + len(labels)))
    index = ConfirmedIndex.build(ids, labels, [f"{i}.png" for i in ids], rows.half(), 16)
    q = normalise_rows(rows[:1], 16)[0]
    found = index.nearest(q, ["c0", "c2"], per_cultivar=2, exclude=100)
    assert [n.label for n in found] == ["c0", "c0", "c2", "c2"]
    assert 100 not in [n.image_id for n in found] and found[0].similarity >= found[1].similarity
    assert found[0].similarity > found[2].similarity  # its own cultivar is closer


def test_unlike_images_are_flagged_and_typical_ones_are_not():
    """Calibrated on the confirmed images: a member of a cluster is typical; a far point is unusual."""
    rows, labels = _clusters()
    index = ConfirmedIndex.build(list(range(len(labels))), labels, [""] * len(labels), rows, 16)
    member = normalise_rows(rows[5:6] + 0.01, 16)[0]
    typical = index.unlikeness(member)
    assert not typical.unusual and typical.score == 0.0 and "similar" in typical.describe()
    stranger = normalise_rows(torch.randn(1, 32, generator=torch.Generator().manual_seed(9)) * 3, 16)[0]
    odd = index.unlikeness(stranger)
    assert odd.unusual and 0.0 <= odd.score <= 1.0 and "Unlike the confirmed images" in odd.describe()
    assert odd.similarity < odd.threshold < odd.typical


def test_too_few_confirmed_images_never_warn():
    """Below the calibration minimum the score says so instead of guessing a threshold."""
    rows, labels = _clusters(n_per=2)
    index = ConfirmedIndex.build(list(range(6)), labels, [""] * 6, rows, 16)
    far = index.unlikeness(normalise_rows(-rows[:1], 16)[0])
    assert not far.unusual and far.threshold is None and "too few" in far.describe()
    empty = ConfirmedIndex.build([], [], [], torch.zeros(0, 32), 16)
    assert empty.nearest(torch.zeros(32), ["c0"]) == [] and not empty.unlikeness(torch.zeros(32)).unusual


def test_near_duplicates_are_named():
    """A re-saved copy of a confirmed image is named as its near-duplicate; a different leaf is not."""
    rows, labels = _clusters(noise=2.0)  # leaves of one cultivar differ as much as real ones do
    index = ConfirmedIndex.build(list(range(len(labels))), labels, [""] * len(labels), rows, 16)
    copy = index.unlikeness(normalise_rows(rows[3:4] * 1.001, 16)[0], exclude=None)
    assert copy.near_duplicate is not None and copy.near_duplicate.image_id == 3
    other = index.unlikeness(normalise_rows(rows[3:4], 16)[0], exclude=3)  # itself excluded: its cluster mates
    assert other.near_duplicate is None


def test_calibration_on_a_sample_matches_the_full_leave_one_out():
    """Above the sample size the threshold comes from a sample of confirmed images and stays close to the full one."""
    rows, labels = _clusters(n_per=1000, noise=2.0)  # 3,000 confirmed images
    index = ConfirmedIndex.build(list(range(len(labels))), labels, [""] * len(labels), rows, 16)
    sims = index.vectors @ index.vectors.T
    sims.fill_diagonal_(-2.0)
    best = sims.max(dim=1).values
    assert abs(index.judge(0.0).threshold - float(torch.quantile(best, 0.02))) < 0.02
    assert abs(index.judge(0.0).typical - float(best.median())) < 0.01
