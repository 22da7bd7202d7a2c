"""What a 429 says depends on how the refused request went out (issue 11, items 1-2): in
a burst (earned by idle time, or catching up on a slot a sender took late), only that the
server's burst is smaller than ours; spaced, that the rate is too high, also while bursts
are allowed. Fake time; no sockets."""

from __future__ import annotations

import pytest

from tracker._pacing import BURST_WARMUP, DECREASE_NEAR, LocalPacer
from tracker.testing import FakeClock

RATE = 200.0
INTERVAL = 1.0 / RATE


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def take(pacer: LocalPacer, at: float, waiting_since: float = 0.0) -> float:
    """The first slot from ``at``, taken by a sender that waited in line: its time."""
    wait = pacer.turn(at)
    while wait > 0:
        at += wait
        wait = pacer.turn(at)
    pacer.took(at, True, 0, waiting_since)
    return at


def bursts_allowed(pacer: LocalPacer, clock: FakeClock) -> float:
    """Past the warm-up, then a backlog sent at the rate for a second: the time."""
    now = take(pacer, clock.monotonic())
    clock.advance(BURST_WARMUP + 1)
    now = clock.monotonic()
    end = now + 1.0
    while now < end:
        now = take(pacer, now)
    return now


class TestRefusals:
    def test_a_spaced_request_refused_lowers_the_rate_though_bursts_are_allowed(
        self, clock: FakeClock
    ) -> None:
        pacer = LocalPacer(rate_limit=RATE, workers=8)
        now = take(pacer, bursts_allowed(pacer, clock))
        pacer.rate_limited(now + 0.001, now, pause=1.0)
        assert pacer.rate(now + 0.001) == pytest.approx(DECREASE_NEAR * RATE)

    def test_a_catch_up_refused_only_stops_bursts(self, clock: FakeClock) -> None:
        # A sender took its slot late (the GIL) while events waited; the next one went
        # out at once to catch up, and a server without burst refused it. Its rate is
        # not in question yet: at 1 ms of round trip, one at a time at nginx burst=0's
        # rate goes through.
        pacer = LocalPacer(rate_limit=RATE, workers=8)
        now = bursts_allowed(pacer, clock)
        late = take(pacer, now + 1.6 * INTERVAL)
        catch_up = take(pacer, late)
        assert catch_up - late < INTERVAL  # it did catch up
        pacer.rate_limited(catch_up + 0.001, catch_up, pause=0.0)
        assert pacer.rate(catch_up + 0.001) == RATE
        spaced = take(pacer, catch_up + 1.0)
        assert take(pacer, spaced) - spaced >= 0.99 * INTERVAL  # no catching up any more

    def test_a_burst_idle_time_earned_refused_only_stops_bursts(self, clock: FakeClock) -> None:
        pacer = LocalPacer(rate_limit=RATE, workers=8)
        now = bursts_allowed(pacer, clock)
        arrived = now + 1.0  # nothing to send for a second, then events together
        first = take(pacer, arrived, waiting_since=arrived)
        second = take(pacer, first, waiting_since=arrived)
        assert second == first  # a burst
        pacer.rate_limited(second + 0.001, second, pause=0.0)
        assert pacer.rate(second + 0.001) == RATE
        later = second + 10.0
        assert pacer.turn(later) == 0.0
        assert pacer.turn(later) > 0  # no burst any more
