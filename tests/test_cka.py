"""CKA of attention maps: the unbiased HSIC estimator, minibatch accumulation, the model matrix and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ila_core.analysis.cka import CKAAccumulator, cka, cka_matrix, gram_linear, hsic_unbiased_pairwise

SIZE = 96


def _hsic_reference(k: torch.Tensor, l: torch.Tensor) -> float:
    """Nguyen et al. (2021) Eq. 3 written out literally."""
    n = k.shape[0]
    k, l = k.clone(), l.clone()
    k.fill_diagonal_(0)
    l.fill_diagonal_(0)
    ones = torch.ones(n, 1, dtype=k.dtype)
    term1 = torch.trace(k @ l)
    term2 = (ones.T @ k @ ones) * (ones.T @ l @ ones) / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (ones.T @ k @ l @ ones)
    return float((term1 + term2 - term3) / (n * (n - 3)))


def test_pairwise_hsic_matches_the_formula():
    """The vectorised estimator equals Eq. 3 for every pair."""
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(7, d, generator=gen, dtype=torch.float64) for d in (3, 5, 11)]
    grams = torch.stack([gram_linear(f) for f in feats])
    hsic = hsic_unbiased_pairwise(grams)
    for i in range(3):
        for j in range(3):
            assert float(hsic[i, j]) == pytest.approx(_hsic_reference(feats[i] @ feats[i].T, feats[j] @ feats[j].T))


def test_cka_with_itself_is_one_and_invariant_to_scale_and_rotation():
    """CKA(X, X) = 1 and linear CKA ignores isotropic scaling and orthogonal maps of the features."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(20, 8, generator=gen)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen))
    assert cka(x, x) == pytest.approx(1.0)
    assert cka(x, 3.0 * x @ q) == pytest.approx(1.0, abs=1e-6)


def test_cka_of_independent_features_is_small():
    """Independent random features give CKA near zero (the unbiased estimator has no positive bias)."""
    gen = torch.Generator().manual_seed(2)
    assert abs(cka(torch.randn(300, 20, generator=gen), torch.randn(300, 20, generator=gen))) < 0.1


def test_accumulator_averages_hsic_over_batches():
    """CKA over two batches uses the mean of each HSIC term, not the mean of per-batch CKAs."""
    gen = torch.Generator().manual_seed(3)
    a1, b1, a2, b2 = (torch.randn(6, 4, generator=gen, dtype=torch.float64) for _ in range(4))
    acc = CKAAccumulator()
    acc.update([a1, b1])
    acc.update([a2, b2])
    h1 = hsic_unbiased_pairwise(torch.stack([gram_linear(a1), gram_linear(b1)]))
    h2 = hsic_unbiased_pairwise(torch.stack([gram_linear(a2), gram_linear(b2)]))
    h = (h1 + h2) / 2
    expected = float(h[0, 1] / torch.sqrt(h[0, 0] * h[1, 1]))
    assert acc.result()[0, 1] == pytest.approx(expected)
    assert acc.batches == 2


def test_accumulator_skips_small_batches_and_needs_one():
    """Batches under 4 images are skipped; with none accumulated result() is a ValueError."""
    acc = CKAAccumulator()
    assert acc.update([torch.randn(3, 2), torch.randn(3, 2)]) is False
    with pytest.raises(ValueError, match="no batch"):
        acc.result()


def test_cka_matrix_of_ila_model_is_symmetric_with_unit_diagonal(tiny_vit):
    """All 6 layers compare although ILA changes their token counts; the matrix is symmetric, diagonal 1."""
    gen = torch.Generator().manual_seed(4)
    batches = [torch.randn(5, 3, SIZE, SIZE, generator=gen) for _ in range(2)]
    m = cka_matrix(tiny_vit, batches)
    assert m.shape == (6, 6)
    np.testing.assert_allclose(m, m.T)
    np.testing.assert_allclose(np.diag(m), np.ones(6), atol=1e-9)
    assert np.isfinite(m).all()


def test_cka_matrix_accepts_image_label_tuples_and_restores_the_model(tiny_vit):
    """(images, labels) batches work; afterwards no hooks remain and fused attention is back."""
    fused = [m.fused_attn for m in tiny_vit.modules() if hasattr(m, "fused_attn")]
    tiny_vit.train()
    m = cka_matrix(tiny_vit, [(torch.randn(4, 3, SIZE, SIZE), torch.zeros(4))], blocks=[0, 5])
    assert m.shape == (2, 2)
    assert tiny_vit.training
    assert [m.fused_attn for m in tiny_vit.modules() if hasattr(m, "fused_attn")] == fused
    assert not any(mod._forward_pre_hooks for mod in tiny_vit.modules())


def _write_images(folder, n: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(folder / f"leaf{i}.png")


def test_cka_cli_writes_figure_and_json(tmp_path, capsys):
    """`python -m ila_core cka --images DIR --json` writes cka.png and cka.json with both matrices."""
    from ila_core.cli import main

    _write_images(tmp_path / "imgs", 9)
    out = tmp_path / "out"
    argv = ["cka", "--images", str(tmp_path / "imgs"), "--backbone", "test_vit", "--image-size", str(SIZE),
            "--weights", "none", "--ds-locations", "1,3", "--batch-size", "4", "--out-dir", str(out), "--json"]  # fmt: skip
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "cka.json").read_text())
    assert printed["num_images"] == 8  # two full batches of 4; the ninth image is left out
    assert np.asarray(saved["plain"]).shape == (6, 6) and np.asarray(saved["ila"]).shape == (6, 6)
    assert (out / "cka.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cka_cli_reads_the_label_store(tmp_path, capsys):
    """Without --images the labelled images of <data-dir>/ila.db are used."""
    from ila_core.cli import main
    from ila_core.training.toydata import write_toy_store

    write_toy_store(tmp_path, num_classes=2, train_per_class=2, holdout_per_class=0, size=48)
    argv = ["cka", "--data-dir", str(tmp_path), "--backbone", "test_vit", "--image-size", str(SIZE),
            "--weights", "none", "--ds-locations", "1,3", "--batch-size", "4", "--json"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 4
    assert (tmp_path / "analysis" / "cka.png").exists()


def test_cka_cli_without_store_or_images_is_a_clear_error(tmp_path, capsys):
    """A data dir without ila.db and no --images exits 2 with a message naming the fix."""
    from ila_core.cli import main

    assert main(["cka", "--data-dir", str(tmp_path), "--weights", "none"]) == 2
    assert "--images" in capsys.readouterr().err
    assert not (tmp_path / "ila.db").exists()  # no store is created as a side effect
