"""A tracker that went through a 429 pause, 500s and an overflow, for the metrics tests."""

from __future__ import annotations

import time
from typing import Any, Callable

from tracker import Tracker
from tracker.testing import FakeClock, FakePX

from ._support import wait_until

PAUSE = 5.0
CAPACITY = 3


def drive(clock: FakeClock, tracker: Tracker, timeout: float = 20.0) -> None:
    """Move the fake clock until everything is settled (retries and pauses due)."""
    deadline = time.monotonic() + timeout
    while not tracker.flush(timeout=0):
        assert time.monotonic() < deadline, tracker.stats()
        clock.advance(0.5)
        time.sleep(0.005)


def faulted(
    px: FakePX,
    make_tracker: Callable[..., Tracker],
    during_pause: Callable[[Tracker], None],
) -> tuple[Tracker, FakeClock]:
    """One event gets a 429 (every sender pauses for PAUSE fake seconds); meanwhile the
    queue (CAPACITY) fills and two events overflow; ``during_pause`` looks at it then;
    after the pause two requests get 500s (no retries: retries_exhausted), one a 201.

    Outcome: tracked 5, delivered 1, failed 2 (retries_exhausted), dropped 2
    (queue_overflow), rate_limited 1, retries 1, four requests."""
    clock = FakeClock()
    px.respond_next(429, headers={"Retry-After": str(int(PAUSE))})
    px.respond_next(500, times=2)
    options: dict[str, Any] = {"workers": 1, "rate_limit": None, "max_retries": 0}
    tracker = make_tracker(px.url, clock=clock, max_queue_size=CAPACITY, **options)
    tracker.track("u0", "first")
    assert wait_until(lambda: tracker.stats().retries == 1)  # paused, waiting to retry
    accepted = [tracker.track(f"u{i}", "later") for i in range(1, 5)]
    assert [a is not None for a in accepted] == [True, True, False, False]
    during_pause(tracker)
    drive(clock, tracker)
    stats = tracker.stats()
    expected = (5, 1, 2, 2, 0, 1, 1)
    got = (stats.tracked, stats.delivered, stats.failed, stats.dropped, stats.pending)
    assert (*got, stats.rate_limited, stats.retries) == expected, stats
    assert [r.status for r in px.requests] == [429, 500, 500, 201]
    return tracker, clock
