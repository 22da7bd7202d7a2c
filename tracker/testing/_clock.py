"""FakeClock: a clock tests move by hand, so backoff, pauses and deadlines run instantly."""

from __future__ import annotations

import threading
import weakref
from typing import Optional

from tracker._clock import Clock


class FakeClock(Clock):
    """A clock that moves only when told to: ``advance(seconds)`` moves time forward and
    wakes every tracker waiting on it, so backoff, pauses and deadlines run instantly."""

    def __init__(self, start: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self._lock = threading.Lock()
        self._now = start
        self._wall_offset = wall - start
        self._conditions: weakref.WeakSet[threading.Condition] = weakref.WeakSet()

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    def time_ms(self) -> int:
        return int(self.time() * 1000)

    def wait(self, cond: threading.Condition, timeout: Optional[float]) -> None:
        if timeout is not None and timeout <= 0:
            return
        with self._lock:
            self._conditions.add(cond)
        # Real time only as a safety net: advance() or a state change wakes us.
        cond.wait(0.5)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
            conditions = list(self._conditions)
        for cond in conditions:
            with cond:
                cond.notify_all()
