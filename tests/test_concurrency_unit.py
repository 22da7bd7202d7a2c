"""How many requests in flight: between Little's law on the shortest recent and on the mean
round trip, set by shortfalls of the planned rate and by senders left waiting (issue 11:
the threads that run are the threads the rate needs). Fake time; no sockets."""

from __future__ import annotations

import math
import threading
import time
from typing import Optional

from tracker._clock import Clock
from tracker._concurrency import HEADROOM, SHRINK_HOLD, WINDOW, Concurrency
from tracker._pacing import LocalPacer, Turns

SPAN = WINDOW * 1.01  # a window, past its end
LONG_AGO = -1.0  # "events have waited since": all the window


def sized(latency: float, rate: float = 200.0) -> int:
    return math.ceil(rate * latency * HEADROOM)


def window(
    c: Concurrency,
    start: float,
    shortfall: float = 0.0,
    spare: int = 0,
    slots: int = 100,
    waiting_since: float = LONG_AGO,
) -> float:
    """Slots taken evenly over one window after ``start`` (when the last one was taken),
    their planned intervals ``shortfall`` short of it, ``spare`` senders waiting at each.
    The window's end."""
    planned = SPAN * (1.0 - shortfall) / slots
    for i in range(1, slots + 1):
        c.took(start + SPAN * i / slots, planned, spare, waiting_since)
    return start + SPAN


def jittery() -> Concurrency:
    """At 200/s: a 1 ms round trip, then a 40 ms one (the GIL, or the network)."""
    c = Concurrency(200.0, 64)
    c.answered(0.001)
    c.answered(0.040)
    c.took(0.0, 0.005, 0, LONG_AGO)  # the first slot opens the first window
    return c


def shrunk() -> tuple[Concurrency, float]:
    c, t = jittery(), 0.0
    while c.limit() > 1:
        t = window(c, t)
    return c, t


class TestSendersGo:
    def test_one_per_window_without_shortfall_down_to_the_shortest_round_trip(self) -> None:
        c = jittery()
        most = c.limit()
        assert most == sized(0.001 + 0.5 * 0.039)  # Little's law on the mean (EWMA)
        t, seen = 0.0, []
        for _ in range(most + 2):
            t = window(c, t)
            seen.append(c.limit())
        assert seen == [*range(most - 1, 0, -1), 1, 1, 1]
        assert sized(0.001) == 1

    def test_senders_spare_at_every_slot_go_at_once(self) -> None:
        c = jittery()
        most = c.limit()
        window(c, 0.0, spare=3)
        assert c.limit() == most - 3

    def test_not_below_the_shortest_recent_round_trip(self) -> None:
        c = Concurrency(200.0, 64)
        c.answered(0.050)
        c.answered(0.080)
        c.took(0.0, 0.005, 0, LONG_AGO)
        t = 0.0
        for _ in range(20):
            t = window(c, t, spare=5)
        assert c.limit() == sized(0.050)

    def test_a_window_with_few_slots_says_nothing(self) -> None:
        c = jittery()
        most = c.limit()
        window(c, 0.0, slots=5)  # little demand: no evidence either way
        assert c.limit() == most


class TestShortfallAddsSenders:
    def test_in_proportion_up_to_the_mean_round_trip(self) -> None:
        c, t = shrunk()
        most = sized(0.001 + 0.5 * 0.039)
        t = window(c, t, shortfall=0.10)  # a tenth of the window unserved: one more
        assert c.limit() == 2
        t = window(c, t, shortfall=0.45)  # near half: near twice as many
        assert c.limit() == 4
        window(c, t, shortfall=0.90)
        assert c.limit() == most  # never past Little's law on the mean round trip

    def test_a_little_neither_adds_nor_takes(self) -> None:
        c, t = shrunk()
        window(c, t, shortfall=0.10)
        for shortfall in [0.006, 0.01, 0.019] * 5:  # past SHRINK_HOLD
            t = window(c, t, shortfall=shortfall)
            assert c.limit() == 2

    def test_not_when_the_store_ran_empty(self) -> None:
        # Demand under the rate: slots go unused because no event waits (a worker
        # waking for a new one is late for a slot long due), not for want of a sender.
        c, t = shrunk()
        window(c, t, shortfall=0.5, waiting_since=t + SPAN / 2)
        assert c.limit() == 1

    def test_none_go_for_a_while_after_some_were_added(self) -> None:
        c, t = shrunk()
        t = window(c, t, shortfall=0.5)
        added = c.limit()
        start = t
        while t + SPAN < start + SHRINK_HOLD:
            t = window(c, t)
            assert c.limit() == added
        window(c, t)
        assert c.limit() == added - 1

    def test_a_pause_is_neither_a_shortfall_nor_spare(self) -> None:
        c, t = shrunk()
        c.restart(t + 100.0)  # a 429 pause
        window(c, t + 50.0, shortfall=0.9)  # slots held back by it
        assert c.limit() == 1
        c = jittery()
        most = c.limit()
        c.restart(100.0)
        window(c, 50.0, spare=5)  # senders waiting through it
        assert c.limit() == most

    def test_a_longer_round_trip_scales_the_count(self) -> None:
        c, _ = shrunk()
        for _ in range(5):
            c.answered(0.300)  # the network changed: 300 ms
        assert c.limit() >= 64 // sized(0.001 + 0.5 * 0.039)


class TestThePacerReportsShortfalls:
    def count_after(self, backlog: bool) -> int:
        """One sender at 200/s for a few seconds, busy 1 ms and 15 ms in turn (8 ms on
        average: it cannot serve every 5 ms slot alone), events waiting all along when
        ``backlog``, else arriving just as it takes them: the count then."""
        pacer = LocalPacer(rate_limit=200.0, workers=64)
        t, n = 0.0, 0
        while t < 5.0:
            wait = pacer.turn(t)
            if wait > 0:
                t += wait
                continue
            pacer.took(t, 0, 0.0 if backlog else t)
            n += 1
            busy = 0.001 if n % 2 else 0.015
            pacer.answered(t + busy, t)
            t += busy
        return pacer.concurrency()

    def test_only_while_events_waited(self) -> None:
        assert self.count_after(backlog=False) == 1
        assert self.count_after(backlog=True) > 1


class _Recording:
    """A pacer that grants a slot only once ``open`` is set, and records ``took``."""

    def __init__(self) -> None:
        self.open = False
        self.took_calls: list[tuple[int, float]] = []

    def turn(self, now: float) -> float:
        return 0.0 if self.open else 10.0

    def took(self, now: float, spare: int, waiting_since: float) -> None:
        self.took_calls.append((spare, waiting_since))

    def wants_refill(self) -> bool:
        return False


class TestTurnsTellThePacer:
    def test_a_sender_finding_its_slot_due_and_nobody_in_line(self) -> None:
        pacer = _Recording()
        pacer.open = True
        lock = threading.Lock()
        turns = Turns(lock, Clock(), pacer)  # type: ignore[arg-type]
        with lock:
            assert turns.wait(lambda: True, 12.5)
        assert pacer.took_calls == [(0, 12.5)]

    def test_senders_in_line_are_spare(self) -> None:
        pacer = _Recording()
        lock = threading.Lock()
        turns = Turns(lock, Clock(), pacer)  # type: ignore[arg-type]
        taken: list[Optional[bool]] = [None, None, None]

        def sender(i: int) -> None:
            with lock:
                taken[i] = turns.wait(lambda: True, float(i))

        threads = [threading.Thread(target=sender, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with lock:
                if len(turns._line) == 3:
                    pacer.open = True
                    turns.wake_all()
                    break
            time.sleep(0.001)
        for thread in threads:
            thread.join(10)
        assert taken == [True, True, True]
        calls = pacer.took_calls
        assert [spare for spare, _ in calls] == [2, 1, 0]
        assert sorted(since for _, since in calls) == [0.0, 1.0, 2.0]
