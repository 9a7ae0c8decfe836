"""Classification metrics from a confusion matrix: top-1, top-5, macro-F1, per-class accuracy.

Everything is accumulated as integer counts in tensors (:class:`MetricAccumulator`), so that several
processes can sum them with one ``all_reduce`` and get exactly the metrics of the whole split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = ["EvalMetrics", "MetricAccumulator"]


@dataclass(frozen=True)
class EvalMetrics:
    """Metrics of one evaluation pass (fractions in [0, 1])."""

    count: int
    loss: float
    top1: float
    top5: float  # top-min(5, num_classes)
    macro_f1: float  # mean F1 over classes that occur in targets or predictions
    per_class_accuracy: dict[str, float | None] = field(default_factory=dict)  # None: no samples of that class
    confusion: list[list[int]] = field(default_factory=list)  # rows: true class, columns: predicted

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    def summary(self) -> dict[str, float]:
        """The headline numbers only (for job metric rows and version lists)."""
        return {"top1": self.top1, "top5": self.top5, "macro_f1": self.macro_f1, "loss": self.loss, "count": self.count}


class MetricAccumulator:
    """Counts over batches: a confusion matrix, top-5 hits and the summed loss."""

    def __init__(self, num_classes: int, *, topk: int = 5) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.topk = min(topk, num_classes)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)
        self.topk_hits = torch.zeros((), dtype=torch.float64)
        self.loss_sum = torch.zeros((), dtype=torch.float64)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor, loss_sum: float | torch.Tensor = 0.0) -> None:
        """Add a batch: ``logits`` (B, C), ``targets`` (B,), and the batch's summed (not mean) loss."""
        logits, targets = logits.detach().float().cpu(), targets.detach().cpu().long()
        pred = logits.argmax(dim=1)
        idx = targets * self.num_classes + pred
        self.confusion += torch.bincount(idx, minlength=self.num_classes**2).reshape(self.num_classes, -1)
        top = logits.topk(self.topk, dim=1).indices
        self.topk_hits += (top == targets[:, None]).any(dim=1).sum()
        self.loss_sum += float(loss_sum)

    def state(self) -> torch.Tensor:
        """All counts as one flat float64 tensor (for ``all_reduce``)."""
        return torch.cat([self.confusion.flatten(), self.topk_hits.reshape(1), self.loss_sum.reshape(1)])

    def load_state(self, flat: torch.Tensor) -> None:
        """Inverse of :meth:`state` (after summing across processes)."""
        flat = flat.detach().cpu().double()
        c = self.num_classes**2
        self.confusion = flat[:c].reshape(self.num_classes, self.num_classes).clone()
        self.topk_hits, self.loss_sum = flat[c].clone(), flat[c + 1].clone()

    def compute(self, class_names: list[str] | None = None) -> EvalMetrics:
        """Metrics from the counts so far; ``class_names`` label the per-class accuracies."""
        names = class_names or [str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        cm = self.confusion
        n = float(cm.sum())
        tp = cm.diag()
        support, predicted = cm.sum(dim=1), cm.sum(dim=0)
        per_class = {
            name: (float(tp[i] / support[i]) if support[i] > 0 else None) for i, name in enumerate(names)
        }
        present = (support + predicted) > 0
        f1 = 2 * tp / (support + predicted).clamp(min=1)
        macro_f1 = float(f1[present].mean()) if bool(present.any()) else 0.0
        return EvalMetrics(
            count=int(n),
            loss=float(self.loss_sum / n) if n else 0.0,
            top1=float(tp.sum() / n) if n else 0.0,
            top5=float(self.topk_hits / n) if n else 0.0,
            macro_f1=macro_f1,
            per_class_accuracy=per_class,
            confusion=[[int(v) for v in row] for row in cm.tolist()],
        )
