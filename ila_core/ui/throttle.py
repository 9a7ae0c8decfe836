"""Login throttling: after a few wrong passwords, a user name or an address waits before it may try again.

Gradio's login has no rate limit (RELIABILITY fact 1). :class:`LoginThrottle` counts failed logins per user
name and per client address; beyond ``free_failures`` each further failure doubles the wait (from
``base_delay_s`` up to ``max_delay_s``). While a wait runs, every attempt is refused without checking the
password, the right one included, so guessing gains nothing and no answer says whether it was right. A
success clears the user's and the address's count. Waits are bounded, so someone who types another
user's name wrongly can delay that user by at most ``max_delay_s`` at a time, never lock them out for good.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LoginThrottle", "ThrottlePolicy"]


@dataclass(frozen=True)
class ThrottlePolicy:
    """How many failures are free and how the wait grows after them."""

    free_failures: int = 5  # per user name: wrong passwords allowed without a wait
    free_failures_per_address: int = 20  # per client address, over all the names it tries
    base_delay_s: float = 2.0  # the first wait; doubles with each further failure
    max_delay_s: float = 300.0
    forget_after_s: float = 3600.0  # a count with no failure for this long starts again at zero

    def __post_init__(self) -> None:
        if self.free_failures < 0 or self.free_failures_per_address < 0:
            raise ValueError("free failure counts must be >= 0")
        if not 0 < self.base_delay_s <= self.max_delay_s or self.forget_after_s <= 0:
            raise ValueError("need 0 < base_delay_s <= max_delay_s and forget_after_s > 0")

    def delay(self, failures: int, free: int) -> float:
        """Seconds to wait after ``failures`` failures of which ``free`` cost nothing."""
        beyond = failures - free
        if beyond <= 0:
            return 0.0
        return min(self.max_delay_s, self.base_delay_s * 2.0 ** min(beyond - 1, 30))


@dataclass
class _Count:
    failures: int = 0
    last: float = 0.0


class LoginThrottle:
    """Failed-login counts per user name and per address (thread-safe; one per app process).

    Args:
        policy: free failures and waits.
        clock: monotonic seconds (injectable for tests).
    """

    _MAX_KEYS = 10_000  # past this, counts older than forget_after_s are dropped

    def __init__(self, policy: ThrottlePolicy = ThrottlePolicy(), clock: Callable[[], float] = time.monotonic) -> None:
        self.policy, self._clock = policy, clock
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], _Count] = {}

    def retry_after(self, user: str, address: str) -> float:
        """Seconds before this user name from this address may try again (0: now)."""
        now = self._clock()
        with self._lock:
            waits = [self._wait(("user", user), self.policy.free_failures, now),
                     self._wait(("addr", address), self.policy.free_failures_per_address, now)]  # fmt: skip
        return max(waits)

    def failed(self, user: str, address: str) -> None:
        """Count one wrong password."""
        now = self._clock()
        with self._lock:
            for key in (("user", user), ("addr", address)):
                count = self._current(key, now)
                count.failures += 1
                count.last = now
            if len(self._counts) > self._MAX_KEYS:
                self._prune(now)

    def succeeded(self, user: str, address: str) -> None:
        """A correct login clears both counts."""
        with self._lock:
            self._counts.pop(("user", user), None)
            self._counts.pop(("addr", address), None)

    def clear(self) -> None:
        """Forget every count (tests, or an admin restarting the app)."""
        with self._lock:
            self._counts.clear()

    def _current(self, key: tuple[str, str], now: float) -> _Count:
        count = self._counts.get(key)
        if count is None or now - count.last > self.policy.forget_after_s:
            count = self._counts[key] = _Count()
        return count

    def _wait(self, key: tuple[str, str], free: int, now: float) -> float:
        count = self._counts.get(key)
        if count is None or now - count.last > self.policy.forget_after_s:
            return 0.0
        return max(0.0, count.last + self.policy.delay(count.failures, free) - now)

    def _prune(self, now: float) -> None:
        old = [k for k, c in self._counts.items() if now - c.last > self.policy.forget_after_s]
        for key in old:
            del self._counts[key]

    @staticmethod
    def message(wait_s: float) -> str:
        """What the refused login is told."""
        return f"Too many failed logins for this account or address. Try again in {math.ceil(wait_s)} s."
