"""Analysis: CKA between attention maps of layers, and figures (matplotlib ``Figure`` objects, no pyplot)."""

from .cka import CKAAccumulator, cka, cka_matrix, gram_linear, hsic_unbiased_pairwise
from .figures import (
    cka_pair_figure,
    confusion_figure,
    confusion_matrix,
    efficiency_figure,
    most_confused_pairs,
    per_class_accuracy_figure,
    training_curves_figure,
)

__all__ = [
    "CKAAccumulator",
    "cka",
    "cka_matrix",
    "cka_pair_figure",
    "confusion_figure",
    "confusion_matrix",
    "efficiency_figure",
    "gram_linear",
    "hsic_unbiased_pairwise",
    "most_confused_pairs",
    "per_class_accuracy_figure",
    "training_curves_figure",
]
