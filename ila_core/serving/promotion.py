"""When a new model version may be served: never when it is worse than the probe or the active version.

Every comparison is on the same holdout images (the job's snapshot): the probe fitted in the same job, and
the version active when the job started, evaluated again on this holdout when its own holdout differed
(:mod:`ila_core.serving.holdout`). A version is promoted only when its holdout top-1 **and** macro-F1 are at
least those of every rival; otherwise it is kept (not served) with a note that names the metric and both values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Decision", "Rival", "decide", "METRICS"]

METRICS = ("top1", "macro_f1")  # both must not get worse
_NAMES = {"top1": "holdout top-1", "macro_f1": "macro-F1"}
_EPS = 1e-9  # float noise, not a margin


@dataclass(frozen=True)
class Rival:
    """A version the candidate must match: e.g. ("the probe (version 4)", its metrics on this holdout)."""

    name: str
    metrics: Mapping[str, Any] | None  # None: could not be compared on this holdout (skipped, with a reason)
    why_not: str | None = None


@dataclass(frozen=True)
class Decision:
    """Whether to serve a candidate, and why, in words for the Models tab and the job card."""

    promote: bool
    reason: str


def decide(candidate: Mapping[str, Any] | None, rivals: Sequence[Rival], *, has_active: bool) -> Decision:
    """Promote ``candidate`` (holdout metrics) only if it is at least as good as every comparable rival.

    Args:
        candidate: the new version's holdout metrics (empty/None: there were no holdout images).
        rivals: the probe of the same job and/or the version active at the job's start.
        has_active: whether any version is served now (the first version is always served).
    """
    if not has_active:
        return Decision(True, "first model version: nothing was served before")
    if not candidate or candidate.get("top1") is None:
        return Decision(False, "kept, not served: no holdout images to compare it with the served version")
    compared = []
    for rival in rivals:
        if rival.metrics is None or rival.metrics.get("top1") is None:
            continue
        for key in METRICS:
            new, old = candidate.get(key), rival.metrics.get(key)
            if new is None or old is None:
                continue
            if float(new) + _EPS < float(old):
                return Decision(False, f"kept, not served: {_NAMES[key]} {float(new):.3f} is below "
                                       f"{rival.name}'s {float(old):.3f} on the same holdout")  # fmt: skip
        compared.append(rival.name)
    if not compared:
        skipped = "; ".join(r.why_not for r in rivals if r.why_not) or "no rival had holdout metrics"
        return Decision(True, f"promoted: nothing comparable on this holdout ({skipped})")
    top1, f1 = float(candidate["top1"]), float(candidate.get("macro_f1") or 0.0)
    return Decision(True, f"promoted: holdout top-1 {top1:.3f} and macro-F1 {f1:.3f} at least those of "
                          f"{' and '.join(compared)}")  # fmt: skip
