"""Unit tests of LocalPacer (tracker/_pacing.py) on a FakeClock's time: slots, the pause
after a 429 without a burst at its end, decrease and recovery, concurrency. No sockets,
no threads, no sleeps: the pacer is told the time."""

from __future__ import annotations

import math

import pytest

from tracker._concurrency import HEADROOM
from tracker._pacing import (
    BURST_SECONDS,
    BURST_WARMUP,
    DECREASE,
    DECREASE_EVERY,
    DECREASE_NEAR,
    FAST_RECOVERY,
    NEAR_REQUESTS,
    PLATEAU,
    TRUSTED_AFTER,
    LocalPacer,
)
from tracker.testing import FakeClock


def starts(pacer: LocalPacer, clock: FakeClock, until: float) -> list[float]:
    """A sender that always has work, answered at once, up to ``until`` (fake time): it
    starts whenever the pacer lets it, else waits what the pacer says. The start times."""
    started: list[float] = []
    while clock.monotonic() < until:
        now = clock.monotonic()
        wait = pacer.turn(now)
        if wait == 0.0:
            started.append(now)
            pacer.answered(now, now)
        else:
            clock.advance(wait)
    return started


def starts_unanswered(pacer: LocalPacer, clock: FakeClock, count: int) -> list[float]:
    """``count`` requests started as the pacer lets them, none answered yet (a long round
    trip). Their start times; the clock is left at the last one."""
    started: list[float] = []
    while len(started) < count:
        now = clock.monotonic()
        wait = pacer.turn(now)
        if wait == 0.0:
            started.append(now)
        else:
            clock.advance(wait)
    return started


def warmed_up(pacer: LocalPacer, clock: FakeClock) -> None:
    """Past BURST_WARMUP since the pacer's first slot: bursts allowed from now."""
    assert pacer.turn(clock.monotonic()) == 0.0
    clock.advance(BURST_WARMUP + 1)


def most_in_window(times: list[float], width: float) -> int:
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - width + 1e-9:
            j += 1
        best = max(best, i - j + 1)
    return best


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class TestSlots:
    def test_unpaced_always_may_start(self, clock: FakeClock) -> None:
        pacer = LocalPacer(rate_limit=None, workers=4)
        assert all(pacer.turn(clock.monotonic()) == 0.0 for _ in range(1000))
        assert pacer.rate(clock.monotonic()) is None
        assert pacer.concurrency() == 4

    def test_one_slot_per_interval_and_the_wait_says_how_long(self, clock: FakeClock) -> None:
        pacer = LocalPacer(rate_limit=10.0, workers=4)
        now = clock.monotonic()
        assert pacer.turn(now) == 0.0
        assert pacer.turn(now) == pytest.approx(0.1)
        assert pacer.turn(now + 0.05) == pytest.approx(0.05)
        assert pacer.turn(now + 0.1) == 0.0

    def test_the_rate_holds_over_time(self, clock: FakeClock) -> None:
        pacer = LocalPacer(rate_limit=100.0, workers=8)
        started = starts(pacer, clock, until=clock.monotonic() + 2.0)
        assert 199 <= len(started) <= 201
        assert most_in_window(started, 0.1) <= 11

    def test_no_bursts_before_the_warmup_then_bursts_of_burst_seconds(
        self, clock: FakeClock
    ) -> None:
        rate = 200.0
        pacer = LocalPacer(rate_limit=rate, workers=8)
        start = clock.monotonic()
        early = starts(pacer, clock, until=start + 1.0)
        gaps = [b - a for a, b in zip(early, early[1:])]
        assert min(gaps) >= 1 / rate - 1e-9  # evenly spaced: one at a time
        clock.advance(BURST_WARMUP)  # idle past the warmup earns burst credit
        now = clock.monotonic()
        burst = 0
        while pacer.turn(now) == 0.0:
            burst += 1
        assert burst == round(BURST_SECONDS * rate)

    def test_the_end_of_the_warmup_is_no_burst_for_a_backlog(self, clock: FakeClock) -> None:
        # Bursts become allowed, but the credit for them is earned by idle time from then
        # on: senders that never stopped keep going at the rate.
        rate = 200.0
        pacer = LocalPacer(rate_limit=rate, workers=8)
        start = clock.monotonic()
        started = starts(pacer, clock, until=start + BURST_WARMUP + 1.0)
        around = [t for t in started if t >= start + BURST_WARMUP - 0.5]
        assert most_in_window(around, 0.05) <= rate * 0.05 + 1
        assert len(started) <= rate * (BURST_WARMUP + 1.0) + 1

    def test_a_slow_answer_does_not_let_the_next_one_start_early(self, clock: FakeClock) -> None:
        pacer = LocalPacer(rate_limit=10.0, workers=1)
        t = clock.monotonic()
        for _ in range(TRUSTED_AFTER):  # answers in 10 ms: the network's share of a round trip
            assert pacer.turn(t) == 0.0
            pacer.answered(t + 0.01, t)
            t += 0.01 + 0.1  # an interval after the answer: not trusted yet
        assert pacer.turn(t) == 0.0
        pacer.answered(t + 0.5, t)  # a slow answer: the server may have seen it late
        # One at a time: not before an interval after the server may have seen it.
        assert pacer.turn(t + 0.501) == pytest.approx(t + 0.5 - 0.01 + 0.1 - (t + 0.501))

    def test_a_request_that_left_late_does_not_let_the_next_one_leave_early(
        self, clock: FakeClock
    ) -> None:
        # A long round trip: the next slot comes before the answer. A sender that took its
        # slot and then waited (for the GIL) before its request left would have the next
        # one leave less than an interval after it.
        pacer = LocalPacer(rate_limit=10.0, workers=8)
        t = clock.monotonic()
        for _ in range(TRUSTED_AFTER):  # requests leave 1 ms after their slot, no answers
            assert pacer.turn(t) == 0.0
            pacer.written(t, t + 0.001)
            t += 0.001 + 0.1  # an interval after it left: not trusted yet
        assert pacer.turn(t) == 0.0
        pacer.written(t, t + 0.05)  # this one left 50 ms after its slot
        # Not before an interval after it left, less the shortest slot-to-wire time.
        assert pacer.turn(t + 0.1) == pytest.approx(t + 0.05 - 0.001 + 0.1 - (t + 0.1))

    def test_every_departure_counts_in_whatever_order_it_is_told(self, clock: FakeClock) -> None:
        # Two requests leave before the next turn; the one told last left first (its
        # sender read the clock, then lost the GIL): the later departure still counts.
        pacer = LocalPacer(rate_limit=10.0, workers=8)
        t = clock.monotonic()
        for _ in range(TRUSTED_AFTER):
            assert pacer.turn(t) == 0.0
            pacer.written(t, t + 0.001)
            t += 0.001 + 0.1
        assert pacer.turn(t) == 0.0
        pacer.written(t, t + 0.05)
        pacer.written(t - 0.1, t + 0.02)
        assert pacer.turn(t + 0.1) == pytest.approx(t + 0.05 - 0.001 + 0.1 - (t + 0.1))

    def test_the_first_round_trips_are_not_trusted(self, clock: FakeClock) -> None:
        # The first answers carry a connection's set-up (and a host busy starting): the
        # server may have seen such a request just before its answer, not a fastest
        # round trip before it, so the next one waits an interval from the answer.
        pacer = LocalPacer(rate_limit=10.0, workers=1)
        t0 = clock.monotonic()
        assert pacer.turn(t0) == 0.0
        pacer.answered(t0 + 0.08, t0)
        assert pacer.turn(t0 + 0.1) == pytest.approx(0.08)


class TestPause:
    def test_every_slot_waits_out_the_pause(self, clock: FakeClock) -> None:
        pacer = LocalPacer(rate_limit=100.0, workers=4)
        now = clock.monotonic()
        assert pacer.turn(now) == 0.0
        pacer.rate_limited(now + 0.01, now, pause=2.0)
        assert pacer.paused_until() == pytest.approx(now + 2.01)
        assert pacer.turn(now + 1.0) == pytest.approx(1.01)
        assert pacer.turn(now + 2.0) > 0

    def test_no_burst_when_the_pause_ends(self, clock: FakeClock) -> None:
        rate = 200.0
        pacer = LocalPacer(rate_limit=rate, workers=8)
        warmed_up(pacer, clock)
        starts(pacer, clock, until=clock.monotonic() + 1.0)  # sending, bursts allowed
        now = clock.monotonic()
        pacer.rate_limited(now, now - 0.001, pause=5.0)
        end = pacer.paused_until()
        clock.advance(end - clock.monotonic())
        after = starts(pacer, clock, until=end + 0.5)
        assert after, "nothing started after the pause"
        assert after[0] >= end
        # The slots that came due during the pause do not all go out at its end: the
        # rate (plus one at the window's edge), not a burst of BURST_SECONDS' worth more.
        assert most_in_window(after, 0.05) <= rate * 0.05 + 1

    def test_no_burst_when_the_warmup_ended_during_the_pause(self, clock: FakeClock) -> None:
        rate = 200.0
        pacer = LocalPacer(rate_limit=rate, workers=8)
        now = clock.monotonic()
        assert pacer.turn(now) == 0.0
        pacer.answered(now, now)
        clock.advance(0.01)
        pacer.rate_limited(clock.monotonic(), now, pause=BURST_WARMUP)
        end = pacer.paused_until()
        clock.advance(end - clock.monotonic())
        after = starts(pacer, clock, until=end + 0.5)
        assert most_in_window(after, 0.05) <= rate * 0.05 + 1

    def test_pauses_only_lengthen(self, clock: FakeClock) -> None:
        pacer = LocalPacer(rate_limit=None, workers=2)
        now = clock.monotonic()
        pacer.rate_limited(now, now, pause=10.0)
        pacer.rate_limited(now + 1, now, pause=1.0)  # a shorter, later one
        assert pacer.paused_until() == pytest.approx(now + 10)
        assert pacer.turn(now + 9.99) > 0
        assert pacer.turn(now + 10) == 0.0


class TestDecreaseAndRecovery:
    def test_the_first_429_steps_down_a_little_then_the_rate_climbs_back(
        self, clock: FakeClock
    ) -> None:
        ceiling = 100.0
        pacer = LocalPacer(rate_limit=ceiling, workers=4)
        now = clock.monotonic()
        assert pacer.rate(now) == ceiling
        pacer.rate_limited(now, now, pause=1.0)
        assert pacer.rate(now) == pytest.approx(DECREASE_NEAR * ceiling)
        # Recovery starts when the pause ends, fast up to the plateau...
        assert pacer.rate(now + 1.0) == pytest.approx(DECREASE_NEAR * ceiling)
        plateau = PLATEAU * ceiling
        fast = (plateau - DECREASE_NEAR * ceiling) / (FAST_RECOVERY * ceiling)
        assert pacer.rate(now + 1.0 + fast) == pytest.approx(plateau)
        # ...then slowly, never past the ceiling.
        assert plateau < pacer.rate(now + 1.0 + fast + 10) < ceiling  # type: ignore[operator]
        assert pacer.rate(now + 1e6) == ceiling

    def test_refused_at_once_after_a_decrease_halves(self, clock: FakeClock) -> None:
        ceiling = 100.0
        pacer = LocalPacer(rate_limit=ceiling, workers=4)
        now = clock.monotonic()
        pacer.rate_limited(now, now, pause=0.0)
        later = now + DECREASE_EVERY
        before = pacer.rate(later)  # recovering since the first
        assert before is not None
        pacer.rate_limited(later, later, pause=0.0)  # no answers in between: far
        assert pacer.rate(later) == pytest.approx(DECREASE * before)

    def test_refused_after_a_few_requests_went_through_is_near(self, clock: FakeClock) -> None:
        # Requests started count, not answers: at a long round trip none has come back
        # yet when the refusal of a later one arrives.
        ceiling = 100.0
        pacer = LocalPacer(rate_limit=ceiling, workers=64)
        now = clock.monotonic()
        pacer.rate_limited(now, now, pause=0.0)
        clock.advance(DECREASE_EVERY)
        started = starts_unanswered(pacer, clock, NEAR_REQUESTS)
        before = pacer.rate(started[-1])
        assert before is not None
        pacer.rate_limited(clock.monotonic(), started[-1], pause=0.0)
        assert pacer.rate(clock.monotonic()) == pytest.approx(DECREASE_NEAR * before)

    def test_the_recovery_stops_under_the_rate_requests_really_started_at(
        self, clock: FakeClock
    ) -> None:
        # One at a time, each request also waits for the previous answer: with answers
        # 2 ms slower than the fastest, requests start at 1/(10 ms + 2 ms) = 83/s though
        # the plan says 100/s. Refused there, the fast recovery does not climb back to
        # PLATEAU of 100/s (which the waits would still turn into ~83/s, refused again).
        pacer = LocalPacer(rate_limit=100.0, workers=1)
        started: list[float] = []
        for i in range(30):
            now = clock.monotonic()
            wait = pacer.turn(now)
            while wait > 0:
                clock.advance(wait)
                now = clock.monotonic()
                wait = pacer.turn(now)
            started.append(now)
            pacer.answered(now + (0.001 if i < TRUSTED_AFTER else 0.003), now)
            clock.advance(0.001)
        refused = (len(started[-20:]) - 1) / (started[-1] - started[-20])
        assert refused < 0.9 * 100
        now = clock.monotonic()
        pacer.rate_limited(now, started[-1], pause=1.0)
        # A second after the pause: the fast recovery would be over.
        assert pacer.rate(now + 1.0 + 1.0) < PLATEAU * 100  # type: ignore[operator]

    def test_a_refusal_below_the_demand_keeps_the_planned_rate(self, clock: FakeClock) -> None:
        # Requests started at 20/s because only that many were tracked: a 429 says
        # nothing about 20/s being too much for the server, it steps the plan down.
        pacer = LocalPacer(rate_limit=100.0, workers=4)
        for _ in range(10):
            assert pacer.turn(clock.monotonic()) == 0.0
            clock.advance(0.05)
        now = clock.monotonic()
        pacer.rate_limited(now, now - 0.05, pause=0.0)
        assert pacer.rate(now) == pytest.approx(DECREASE_NEAR * 100)
        # The fast recovery climbs back to just under the planned 100/s, not to 20/s.
        assert pacer.rate(now + 1.0) == pytest.approx(PLATEAU * 100, abs=0.5)

    def test_at_most_one_decrease_per_second(self, clock: FakeClock) -> None:
        pacer, twin = LocalPacer(rate_limit=100.0, workers=4), LocalPacer(100.0, 4)
        now = clock.monotonic()
        for p in (pacer, twin):
            p.rate_limited(now, now, pause=0.0)
        pacer.rate_limited(now + 0.5, now + 0.5, pause=0.0)  # within the second: no decrease
        assert pacer.rate(now + 0.5) == pytest.approx(twin.rate(now + 0.5))
        pacer.rate_limited(now + 1.0, now + 1.0, pause=0.0)  # a second later: one
        assert pacer.rate(now + 1.0) < twin.rate(now + 1.0)  # type: ignore[operator]

    def test_a_429_to_a_request_planned_before_the_reaction_is_no_new_evidence(
        self, clock: FakeClock
    ) -> None:
        pacer = LocalPacer(rate_limit=100.0, workers=4)
        now = clock.monotonic()
        pacer.rate_limited(now + 2, now + 2, pause=0.0)
        once = pacer.rate(now + 2)
        pacer.rate_limited(now + 4, now + 1, pause=0.0)  # sent before the reaction
        assert pacer.rate(now + 4) >= once  # type: ignore[operator]

    def test_a_429_while_bursting_stops_bursts_first(self, clock: FakeClock) -> None:
        rate = 200.0
        pacer = LocalPacer(rate_limit=rate, workers=8)
        warmed_up(pacer, clock)
        now = clock.monotonic()
        assert pacer.turn(now) == 0.0  # a burst's first
        pacer.rate_limited(now, now, pause=0.0)
        assert pacer.rate(now) == rate  # the rate itself is not in question yet
        clock.advance(1.0)
        now = clock.monotonic()
        burst = 0
        while pacer.turn(now) == 0.0:
            burst += 1
        assert burst == 1

    def test_a_429_one_at_a_time_stops_bursts_too(self, clock: FakeClock) -> None:
        # A server that refuses requests sent evenly would refuse bursts as well: bursts
        # do not start when the warm-up ends (against nginx burst=0 the first one drew a
        # 429 and a pause of its own).
        pacer = LocalPacer(rate_limit=200.0, workers=8)
        now = clock.monotonic()
        assert pacer.turn(now) == 0.0
        pacer.rate_limited(now + 0.001, now, pause=0.0)  # in the warm-up: one at a time
        clock.advance(BURST_WARMUP + 10)  # then idle, long past the warm-up
        now = clock.monotonic()
        burst = 0
        while pacer.turn(now) == 0.0:
            burst += 1
        assert burst == 1


class TestConcurrency:
    def test_one_in_flight_until_the_first_answer(self) -> None:
        assert LocalPacer(rate_limit=100.0, workers=16).concurrency() == 1

    def test_littles_law_with_headroom_within_the_cap(self) -> None:
        pacer = LocalPacer(rate_limit=200.0, workers=64)
        pacer.answered(0.1, 0.0)  # 100 ms round trip
        assert pacer.concurrency() == math.ceil(200 * 0.1 * HEADROOM)
        capped = LocalPacer(rate_limit=200.0, workers=4)
        capped.answered(0.1, 0.0)
        assert capped.concurrency() == 4

    def test_latency_rises_are_followed_fast_and_falls_slowly(self) -> None:
        pacer = LocalPacer(rate_limit=100.0, workers=64)
        pacer.answered(0.1, 0.0)
        pacer.answered(1.0, 0.0)  # 1 s
        risen = pacer.concurrency()
        pacer.answered(2.01, 2.0)  # 10 ms
        fallen = pacer.concurrency()
        assert risen > math.ceil(100 * 0.1 * HEADROOM)
        assert fallen > math.ceil(100 * 0.01 * HEADROOM)  # one fast answer is not trusted yet
