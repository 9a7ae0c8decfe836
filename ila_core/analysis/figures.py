"""Analysis figures as ``matplotlib.figure.Figure`` objects (never pyplot: no global figure registry).

Each builder returns a new Figure; the UI hands it to ``gr.Plot``, the CLI calls ``fig.savefig``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, NullFormatter, ScalarFormatter

__all__ = [
    "cka_pair_figure",
    "confusion_figure",
    "confusion_matrix",
    "efficiency_figure",
    "most_confused_pairs",
    "per_class_accuracy_figure",
    "training_curves_figure",
]

_X_KEYS = ("step", "epoch")
_SKIP_KEYS = {"id", "job_id", "step", "epoch", "created_at"}


def _flatten_row(row: Mapping[str, Any]) -> dict[str, Any]:
    # store rows keep the metrics under "values" (job_metrics); plain dicts have them at the top level
    out = {k: v for k, v in row.items() if k != "values"}
    values = row.get("values")
    if isinstance(values, Mapping):
        out.update(values)
    return out


def training_curves_figure(rows: Sequence[Mapping[str, Any]], *, x: str | None = None) -> Figure:
    """Loss and accuracy curves from metric rows.

    Args:
        rows: dicts like ``{"step": 10, "epoch": 1, "train_loss": 0.7, "val_acc": 0.6}``, or store rows with
            the metrics under ``"values"``. Keys containing "loss" go to the left panel, keys containing
            "acc"/"top1"/"top5" to the right; a metric missing from a row is simply not plotted there.
        x: the x-axis key; default "step" when every row has one, else "epoch", else the row index.
    """
    flat = [_flatten_row(r) for r in rows]
    if x is None:
        x = next((k for k in _X_KEYS if flat and all(r.get(k) is not None for r in flat)), None)
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    names = sorted({k for r in flat for k, v in r.items() if k not in _SKIP_KEYS and isinstance(v, (int, float))})
    panels = ((ax_loss, ("loss",), "Loss"), (ax_acc, ("acc", "top1", "top5"), "Accuracy"))
    for ax, words, title in panels:
        plotted = False
        for name in (n for n in names if any(w in n.lower() for w in words)):
            pts = [(r[x] if x else i, r[name]) for i, r in enumerate(flat) if isinstance(r.get(name), (int, float))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, markersize=3, label=name)
                plotted = True
        ax.set_title(title)
        ax.set_xlabel(x or "row")
        ax.grid(alpha=0.3)
        if plotted:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes, color="grey")
    return fig


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """(K, K) counts; rows are true classes, columns predictions."""
    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length ({t.size} vs {p.size})")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise ValueError(f"class index outside 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def most_confused_pairs(matrix: np.ndarray, class_names: Sequence[str], k: int = 5) -> list[tuple[str, str, int]]:
    """The ``k`` largest off-diagonal cells as ``(true name, predicted name, count)``, largest first."""
    m = np.asarray(matrix)
    off = [(int(m[i, j]), i, j) for i in range(m.shape[0]) for j in range(m.shape[1]) if i != j and m[i, j] > 0]
    off.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [(class_names[i], class_names[j], c) for c, i, j in off[:k]]


def _check_square(matrix: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(class_names):
        raise ValueError(f"matrix {m.shape} does not match {len(class_names)} class names")
    return m


def confusion_figure(
    matrix: np.ndarray, class_names: Sequence[str], *, top_pairs: int = 5, normalise: bool = True
) -> Figure:
    """Confusion matrix heatmap (rows normalised to recall when ``normalise``) with the most confused pairs."""
    m = _check_square(matrix, class_names)
    shown = m / np.maximum(m.sum(axis=1, keepdims=True), 1) if normalise else m
    k = len(class_names)
    side = min(4 + 0.35 * k, 16)
    fig = Figure(figsize=(side + 3.5, side), layout="constrained")
    ax, ax_text = fig.subplots(1, 2, width_ratios=(side, 3.5))
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalise else None)
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of true class" if normalise else "images")
    ticks = np.arange(k)
    ax.set_xticks(ticks, labels=class_names, rotation=90, fontsize="small")
    ax.set_yticks(ticks, labels=class_names, fontsize="small")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:  # numbers stay readable only for small matrices
        for i in range(k):
            for j in range(k):
                if m[i, j]:
                    ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize="x-small",
                            color="white" if shown[i, j] > 0.5 * (shown.max() or 1) else "black")  # fmt: skip
    ax_text.axis("off")
    pairs = most_confused_pairs(m.astype(np.int64), class_names, top_pairs)
    lines = ["Most confused (true -> predicted):"] + [f"{a} -> {b}: {c}" for a, b, c in pairs]
    if not pairs:
        lines.append("none")
    ax_text.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", fontsize="small", transform=ax_text.transAxes)
    return fig


def per_class_accuracy_figure(matrix: np.ndarray, class_names: Sequence[str]) -> Figure:
    """Bars of per-class accuracy (recall) from a confusion matrix, with the number of images per class."""
    m = _check_square(matrix, class_names)
    support = m.sum(axis=1)
    acc = np.divide(np.diag(m), support, out=np.zeros_like(support), where=support > 0)
    k = len(class_names)
    fig = Figure(figsize=(max(5.0, 0.45 * k + 2), 4), layout="constrained")
    ax = fig.subplots()
    bars = ax.bar(np.arange(k), acc, color=["tab:red" if s and a < 0.5 else "tab:blue" for a, s in zip(acc, support)])
    ax.bar_label(bars, labels=[f"n={int(s)}" for s in support], fontsize="x-small")
    ax.set_xticks(np.arange(k), labels=class_names, rotation=90, fontsize="small")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("accuracy")
    ax.axhline(float(np.diag(m).sum() / max(m.sum(), 1)), color="grey", linestyle="--", label="overall")
    ax.legend(fontsize="small")
    return fig


def _pick(row: Mapping[str, Any], keys: Sequence[str], what: str) -> Any:
    for key in keys:
        if row.get(key) is not None:
            return row[key]
    raise ValueError(f"result {dict(row)!r} has no {what} (one of {', '.join(keys)})")


def efficiency_figure(results: Sequence[Mapping[str, Any]], *, title: str = "Accuracy vs cost") -> Figure:
    """The paper's Figure-1 style: accuracy against MACs (log scale), marker area ~ trainable parameters.

    Args:
        results: one dict per method, e.g. ``{"variant": "ila", "accuracy": 0.81, "macs": 4.1e9,
            "trainable_params": 1.2e5}`` (``accounting.stats_for(...).to_dict()`` plus an accuracy).
            Accepted aliases: name/method/variant; accuracy/top1/acc; macs (or gmacs);
            trainable_params/ttp. Accuracy in [0, 1] is shown in percent.
    """
    if not results:
        raise ValueError("no results to plot")
    pts = []
    for row in results:
        name = str(_pick(row, ("name", "method", "variant"), "name"))
        accuracy = float(_pick(row, ("accuracy", "top1", "acc"), "accuracy"))
        macs = float(row["gmacs"]) * 1e9 if row.get("gmacs") is not None else float(_pick(row, ("macs",), "macs"))
        params = float(_pick(row, ("trainable_params", "ttp"), "trainable parameter count"))
        pts.append((name, 100 * accuracy if accuracy <= 1 else accuracy, macs / 1e9, params))
    biggest = max(p[3] for p in pts) or 1.0
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.subplots()
    for name, acc, gmacs, params in pts:
        size = 60 + 1500 * math.sqrt(params / biggest)  # area grows with sqrt so small methods stay visible
        ax.scatter(gmacs, acc, s=size, alpha=0.55, edgecolors="black", linewidths=0.5)
        offset = 4 + 0.5 * math.sqrt(size)  # points: just above the marker's edge
        ax.annotate(f"{name} ({params / 1e6:.2f}M)", (gmacs, acc), xytext=(0, offset), textcoords="offset points",
                    ha="center", va="bottom", fontsize="x-small")  # fmt: skip
    ax.set_xscale("log")
    xs, ys = [p[2] for p in pts], [p[1] for p in pts]
    ax.set_xlim(min(xs) / 1.3, max(xs) * 1.3)  # room for the largest markers and their labels
    pad = max(2.0, 0.15 * (max(ys) - min(ys)))
    ax.set_ylim(min(ys) - pad, max(ys) + 2 * pad)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    # label minor ticks plainly over a narrow range; over several decades they would collide
    narrow = max(xs) / min(xs) < 20
    ax.xaxis.set_minor_formatter(FormatStrFormatter("%g") if narrow else NullFormatter())
    ax.set_xlabel("GMACs per image (log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{title} (marker size ~ trainable parameters)")
    ax.grid(alpha=0.3, which="both")
    return fig


def cka_pair_figure(
    left: np.ndarray, right: np.ndarray, *, titles: tuple[str, str] = ("ViT (frozen)", "ViT + ILA")
) -> Figure:
    """Two layer-by-layer CKA heatmaps side by side on one colour scale (ILA paper Fig. 3)."""
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    finite = [v for m in (left, right) for v in np.asarray(m, dtype=float).ravel() if np.isfinite(v)]
    vmin = min(0.0, min(finite)) if finite else 0.0
    im = None
    for ax, matrix, title in zip(axes, (left, right), titles):
        m = np.asarray(matrix, dtype=float)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"CKA matrix must be square, got {m.shape}")
        im = ax.imshow(m, cmap="magma", vmin=vmin, vmax=1.0, origin="lower")
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.set_ylabel("layer")
        ticks = np.arange(m.shape[0])
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
    fig.colorbar(im, ax=list(axes), shrink=0.85, label="CKA of attention maps")
    return fig
