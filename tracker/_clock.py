"""The source of time for every wait in the tracker, so tests can drive it (see FakeClock)."""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional


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


class Deadline:
    """A moment by which something must be done, on a given time source: a tracker's
    clock for flush(timeout), real time for the exit flush (nothing advances a test's
    fake clock while the interpreter exits)."""

    __slots__ = ("_at", "_now")

    def __init__(self, seconds: float, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._at = now() + seconds

    def left(self) -> float:
        """Seconds left, never below 0."""
        return max(0.0, self._at - self._now())

    def expired(self) -> bool:
        return self._now() >= self._at
