"""Why a trained version may be weak, in words: a tiny holdout, a cultivar with one training image or none held out.

These are facts about the training snapshot, said before anyone trusts the number: with 6 holdout images one
mistake moves top-1 by 17 points, and a cultivar seen once cannot be learned reliably. The job card and the
Models tab show them next to the steps-cut warning of :meth:`~ila_core.training.fit.FitResult.shortfall`.
"""

from __future__ import annotations

from collections import Counter

from .dataset import TrainingSet

__all__ = ["MIN_HOLDOUT", "MIN_HOLDOUT_PER_CLASS", "data_warnings"]

MIN_HOLDOUT = 20  # fewer holdout images than this: one image moves top-1 by more than 5 points
MIN_HOLDOUT_PER_CLASS = 2  # fewer per cultivar on average: per-cultivar numbers are noise
_NAMED = 5  # cultivars named per warning


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMED])
    return shown + (f" and {len(names) - _NAMED} more" if len(names) > _NAMED else "")


def data_warnings(data: TrainingSet) -> tuple[str, ...]:
    """Plain sentences about what in this snapshot makes its holdout numbers or its model weak (empty: nothing)."""
    out: list[str] = []
    classes = len(data.class_names)
    held = len(data.holdout)
    if held == 0:
        out.append("no holdout images: the version's accuracy is not measured (assign some images to the holdout)")
    elif held < MIN_HOLDOUT or held < MIN_HOLDOUT_PER_CLASS * classes:
        out.append(f"the holdout is tiny ({held} images for {classes} cultivars): one image moves top-1 by "
                   f"{100 / held:.0f} points, so compare versions with care")  # fmt: skip
    train = Counter(s.label for s in data.train)
    once = [data.class_names[i] for i in range(classes) if train.get(i, 0) == 1]
    if once:
        out.append(f"only one training image of {_names(once)}: label more of "
                   f"{'it' if len(once) == 1 else 'them'} before trusting those predictions")  # fmt: skip
    if held:
        tested = {s.label for s in data.holdout}
        untested = [data.class_names[i] for i in range(classes) if i not in tested]
        if untested:
            out.append(f"no holdout image of {_names(untested)}: the holdout says nothing about "
                       f"{'it' if len(untested) == 1 else 'them'}")  # fmt: skip
    return tuple(out)
