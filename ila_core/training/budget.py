"""A wall-clock budget for the optimizer steps of one run, re-planned as the run goes.

The budget counts training only (not the feature-cache fill, the head's closed-form initialisation or the
final evaluation). After every few steps the plan is re-made from the time of the recent steps, so a machine
that gets busier mid-run shortens the run instead of overrunning it; the plan never grows. The caller fits
the learning-rate schedule to the new plan, so the rate anneals before time runs out.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["StepBudget"]


class StepBudget:
    """How many steps a run plans, and whether a time budget cut it.

    Args:
        requested: steps the recipe asks for.
        minutes: training-time budget; None = no budget (the plan stays ``requested``).
        every: re-plan after every ``every`` steps (under DDP every rank must re-plan at the same steps).
        agree: combines the per-rank plans (DDP: their minimum); identity by default.
        clock: injectable for tests.
    """

    def __init__(
        self,
        requested: int,
        minutes: float | None,
        *,
        every: int = 1,
        window: int = 20,
        agree: Callable[[int], int] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if requested < 1:
            raise ValueError(f"a run needs at least one step, got {requested}")
        self.requested = self.planned = int(requested)
        self.budget_s = minutes * 60 if minutes else None
        self.every, self.agree, self.clock = max(1, every), agree or (lambda n: n), clock
        self._times: deque[float] = deque(maxlen=window + 1)
        self._start: float | None = None

    def start(self) -> None:
        """Training begins now (call after the cache fill)."""
        self._start = self.clock()
        self._times.clear()
        self._times.append(self._start)

    @property
    def elapsed_s(self) -> float:
        """Training seconds so far."""
        return 0.0 if self._start is None else self.clock() - self._start

    @property
    def cut(self) -> bool:
        """True when the budget shortened the run."""
        return self.planned < self.requested

    def step_done(self, done: int) -> bool:
        """Record that ``done`` steps are finished; True if the plan shrank."""
        if self._start is None:
            self.start()
        self._times.append(self.clock())
        if self.budget_s is None or done % self.every:
            return False
        recent = (self._times[-1] - self._times[0]) / max(len(self._times) - 1, 1)
        left = self.budget_s - (self._times[-1] - self._start)
        fits = done + int(max(left, 0.0) // max(recent, 1e-9))
        planned = self.agree(max(done, min(self.planned, fits)))
        if planned < self.planned:
            self.planned = planned
            return True
        return False

    def describe(self) -> str:
        """E.g. "trained 180 of 300 planned steps (time budget 4.0 min)"."""
        if not self.cut:
            return f"trained all {self.requested} planned steps"
        minutes = (self.budget_s or 0) / 60
        return f"trained {self.planned} of {self.requested} planned steps (time budget {minutes:.1f} min)"
