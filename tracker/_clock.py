"""The source of time for every wait in the tracker, so tests can drive it (see FakeClock)."""

from __future__ import annotations

import threading
import time
from typing import Optional


class Clock:
    """Real time. Every wait in the tracker goes through ``wait`` on a Condition, so a
    test clock can wake all waiters when it moves time forward."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def time_ms(self) -> int:
        """Wall-clock epoch milliseconds: the default ``date`` of an event."""
        return time.time_ns() // 1_000_000

    def wait(self, cond: threading.Condition, timeout: Optional[float]) -> None:
        """Wait on ``cond`` (held by the caller) for at most ``timeout`` seconds.

        Callers always re-check their own condition and deadline afterwards: a wake-up
        may be early or spurious.
        """
        cond.wait(timeout)


SYSTEM_CLOCK = Clock()
