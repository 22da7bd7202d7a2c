"""Burst credit comes from idle time only (issue 11): time a slot went by while events
waited (for a sender, or for one to wake) lets no later request catch up, since a limiter
without burst refuses two requests closer together than its rate; and a 429 to a request
that went out spaced, not in a burst, is evidence about the rate. Fake time."""

from __future__ import annotations

import pytest

from tracker._pacing import BURST_SECONDS, BURST_WARMUP, DECREASE_NEAR, LocalPacer
from tracker.testing import FakeClock

RATE = 200.0
INTERVAL = 1.0 / RATE
BURST = round(BURST_SECONDS * RATE)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def take(pacer: LocalPacer, at: float) -> float:
    """The first slot from ``at``, taken by a sender that waited in line: its time."""
    wait = pacer.turn(at)
    while wait > 0:
        at += wait
        wait = pacer.turn(at)
    pacer.took(at, True, 0, 0.0)
    return at


def bursts_allowed(pacer: LocalPacer, clock: FakeClock) -> float:
    """Past the warm-up, then a backlog sent at the rate for a second: the time."""
    assert pacer.turn(clock.monotonic()) == 0.0
    clock.advance(BURST_WARMUP + 1)
    end = clock.monotonic() + 1.0
    while clock.monotonic() < end:
        now = clock.monotonic()
        wait = pacer.turn(now)
        if wait > 0:
            clock.advance(wait)
        else:
            pacer.took(now, True, 0, 0.0)
    return clock.monotonic()


class TestCredit:
    def test_a_slot_taken_late_with_events_waiting_earns_no_catch_up(
        self, clock: FakeClock
    ) -> None:
        pacer = LocalPacer(rate_limit=RATE, workers=8)
        now = take(pacer, bursts_allowed(pacer, clock))
        late = now + 1.6 * INTERVAL  # the next: the sender in line woke late (the GIL)
        assert pacer.turn(late) == 0.0
        pacer.took(late, True, 0, 0.0)
        assert pacer.turn(late + 0.9 * INTERVAL) > 0  # no catching up...
        assert pacer.turn(late + INTERVAL) == 0.0  # ...an interval after, as planned

    def test_the_same_late_slot_with_nobody_waiting_for_a_sender(self, clock: FakeClock) -> None:
        pacer = LocalPacer(rate_limit=RATE, workers=8)
        now = bursts_allowed(pacer, clock)
        late = now + 3 * INTERVAL  # every sender was busy while events waited
        assert pacer.turn(late) == 0.0
        pacer.took(late, False, 0, 0.0)
        assert pacer.turn(late + 0.9 * INTERVAL) > 0

    def test_idle_time_still_earns_a_burst(self, clock: FakeClock) -> None:
        pacer = LocalPacer(rate_limit=RATE, workers=8)
        now = bursts_allowed(pacer, clock)
        start = now + 1.0  # nothing to send for a second, then events together
        arrived = start
        assert pacer.turn(start) == 0.0
        pacer.took(start, False, 0, arrived)
        burst = 1
        while pacer.turn(start) == 0.0:
            pacer.took(start, False, 0, arrived)
            burst += 1
        assert burst == BURST


class TestRefusals:
    def test_a_429_to_a_spaced_request_lowers_the_rate_though_bursts_are_allowed(
        self, clock: FakeClock
    ) -> None:
        # Bursts allowed, but a backlog keeps requests spaced: a refusal says the rate
        # is too high (against nginx burst=0 it was taken for a refused burst, and the
        # next refusal a second later lowered the rate: two pauses instead of one).
        pacer = LocalPacer(rate_limit=RATE, workers=8)
        now = take(pacer, bursts_allowed(pacer, clock))
        pacer.rate_limited(now + 0.001, now, pause=1.0)
        assert pacer.rate(now + 0.001) == pytest.approx(DECREASE_NEAR * RATE)
