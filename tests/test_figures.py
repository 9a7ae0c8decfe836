"""Figure builders return matplotlib Figures and leave pyplot's figure registry empty."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless; must precede the pyplot import below

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from ila_core.analysis.figures import (
    cka_pair_figure,
    confusion_figure,
    confusion_matrix,
    efficiency_figure,
    most_confused_pairs,
    per_class_accuracy_figure,
    training_curves_figure,
)

NAMES = ["Alpha", "Beta", "Gamma"]
MATRIX = np.array([[5, 2, 0], [0, 4, 3], [1, 0, 6]])

BUILDERS = {
    "curves": lambda: training_curves_figure(
        [{"step": s, "epoch": s // 10, "values": {"loss": 1.0 / (s + 1), "holdout_acc": s / 40}} for s in range(30)]
    ),
    "confusion": lambda: confusion_figure(MATRIX, NAMES),
    "per_class": lambda: per_class_accuracy_figure(MATRIX, NAMES),
    "efficiency": lambda: efficiency_figure(
        [
            {"variant": "ila", "accuracy": 0.81, "macs": 4.2e9, "trainable_params": 2.1e5},
            {"variant": "full", "accuracy": 0.83, "macs": 4.6e9, "trainable_params": 8.6e7},
            {"name": "vpt", "top1": 76.0, "gmacs": 9.1, "ttp": 9.2e4},
        ]
    ),
    "cka": lambda: cka_pair_figure(np.eye(4), np.full((4, 4), 0.5)),
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_builder_returns_a_figure_without_pyplot_state(name, tmp_path):
    """Each builder returns a Figure that saves as PNG, and pyplot knows of no figure."""
    fig = BUILDERS[name]()
    assert isinstance(fig, Figure)
    assert plt.get_fignums() == []
    fig.savefig(tmp_path / f"{name}.png")
    assert (tmp_path / f"{name}.png").stat().st_size > 1000


def test_training_curves_split_loss_and_accuracy():
    """Loss keys go to the left panel, accuracy keys to the right, x is the step."""
    rows = [{"step": 1, "train_loss": 2.0}, {"step": 2, "train_loss": 1.0, "val_acc": 0.5}]
    left, right = training_curves_figure(rows).axes
    assert [line.get_label() for line in left.lines] == ["train_loss"]
    assert [line.get_label() for line in right.lines] == ["val_acc"]
    assert list(right.lines[0].get_xdata()) == [2]
    assert left.get_xlabel() == "step"


def test_training_curves_without_rows_say_so():
    """An empty history gives a figure with a 'no data yet' note instead of an error."""
    fig = training_curves_figure([])
    assert any("no data" in t.get_text() for t in fig.axes[0].texts)


def test_confusion_matrix_counts():
    """Rows are true classes, columns predictions; bad indices are a ValueError."""
    m = confusion_matrix([0, 0, 1, 2], [0, 1, 1, 0], 3)
    assert m.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    with pytest.raises(ValueError):
        confusion_matrix([0, 3], [0, 0], 3)


def test_most_confused_pairs_are_sorted_off_diagonal_cells():
    """The largest off-diagonal cells come first, the diagonal never appears."""
    assert most_confused_pairs(MATRIX, NAMES, k=2) == [("Beta", "Gamma", 3), ("Alpha", "Beta", 2)]


def test_confusion_figure_lists_the_confused_pairs():
    """The side panel names the most confused pair."""
    fig = confusion_figure(MATRIX, NAMES, top_pairs=1)
    texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "Beta -> Gamma: 3" in texts


def test_figures_reject_mismatched_inputs():
    """A matrix that does not fit the class names, or a result without accuracy, is a ValueError."""
    with pytest.raises(ValueError):
        confusion_figure(MATRIX, NAMES[:2])
    with pytest.raises(ValueError, match="accuracy"):
        efficiency_figure([{"variant": "ila", "macs": 1e9, "trainable_params": 1e5}])
    with pytest.raises(ValueError):
        cka_pair_figure(np.ones((2, 3)), np.ones((2, 2)))


def test_efficiency_figure_uses_log_macs_and_percent():
    """MACs are on a log axis in G; accuracies in [0, 1] are shown in percent."""
    fig = BUILDERS["efficiency"]()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    offsets = np.vstack([c.get_offsets() for c in ax.collections])
    assert sorted(offsets[:, 1].tolist()) == pytest.approx([76.0, 81.0, 83.0])
    assert sorted(offsets[:, 0].tolist()) == pytest.approx([4.2, 4.6, 9.1])
