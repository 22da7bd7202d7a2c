"""How many requests in flight: between Little's law on the shortest recent and on the mean
round trip, set by time lost for want of a sender and by senders left waiting (issue 11:
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


def sized(latency: float, rate: float = 200.0) -> int:
    return math.ceil(rate * latency * HEADROOM)


def window(
    c: Concurrency, start: float, lost: float = 0.0, spare: int = 0, slots: int = 100
) -> float:
    """Slots taken evenly over one window from ``start``, ``lost`` of it lost for want of
    a sender, ``spare`` senders waiting at each. The window's end."""
    for i in range(slots + 1):
        c.took(start + SPAN * i / slots, lost * SPAN / slots if i else 0.0, spare)
    return start + SPAN


def jittery() -> Concurrency:
    """At 200/s: a 1 ms round trip, then a 40 ms one (the GIL, or the network)."""
    c = Concurrency(200.0, 64)
    c.answered(0.001)
    c.answered(0.040)
    return c


class TestSpareSendersGo:
    def test_one_per_clean_window_down_to_the_shortest_round_trip(self) -> None:
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
        t = 0.0
        for _ in range(20):
            t = window(c, t, spare=5)
        assert c.limit() == sized(0.050)

    def test_a_window_with_few_slots_says_nothing(self) -> None:
        c = jittery()
        most = c.limit()
        window(c, 0.0, slots=5)  # little demand: no evidence either way
        assert c.limit() == most


class TestLostTimeAddsSenders:
    def shrunk(self) -> tuple[Concurrency, float]:
        c, t = jittery(), 0.0
        while c.limit() > 1:
            t = window(c, t)
        return c, t

    def test_in_proportion_up_to_the_mean_round_trip(self) -> None:
        c, t = self.shrunk()
        most = sized(0.001 + 0.5 * 0.039)
        t = window(c, t, lost=0.10)  # a tenth of the window lost: at least one more
        assert c.limit() == 2
        t = window(c, t, lost=0.50)  # half lost: twice as many
        assert c.limit() == 4
        window(c, t, lost=0.90)
        assert c.limit() == most  # never past Little's law on the mean round trip

    def test_a_little_lost_neither_adds_nor_takes(self) -> None:
        c, t = self.shrunk()
        window(c, t, lost=0.10)
        for lost in (0.006, 0.01, 0.019):
            t = window(c, t + 10 * SHRINK_HOLD, lost=lost)
            assert c.limit() == 2

    def test_none_go_for_a_while_after_some_were_added(self) -> None:
        c, t = self.shrunk()
        t = window(c, t, lost=0.5)
        added = c.limit()
        start = t
        while t + SPAN < start + SHRINK_HOLD:
            t = window(c, t)
            assert c.limit() == added
        t = window(c, start + SHRINK_HOLD)
        assert c.limit() == added - 1

    def test_a_pause_is_neither_lost_nor_spare(self) -> None:
        c = jittery()
        most = c.limit()
        c.restart(100.0)  # a 429 pause until t=100
        window(c, 50.0, lost=0.9, spare=5)  # senders waiting through it
        assert c.limit() == most


class TestThePacerReportsLostTime:
    def late_slots(self, starved: bool) -> int:
        """Slots at 200/s for a few seconds, with round trips of 1 ms and 20 ms in
        turn, each taken 4 ms after it came due when ``starved``: the count then."""
        pacer = LocalPacer(rate_limit=200.0, workers=64)
        t, n = 0.0, 0
        end = t + 5.0
        while t < end:
            wait = pacer.turn(t)
            if wait > 0:
                t += wait + (0.004 if starved else 0.0)
                continue
            # Starved: events waited from the start, nobody in line; else events came
            # only as the slot was taken (idle time, not lost).
            pacer.took(t, False, 0, 0.0 if starved else t)
            n += 1
            pacer.answered(t + (0.001 if n % 2 else 0.020), t)  # 1 ms, and GIL waits
            t += 0.0001
        return pacer.concurrency()

    def test_only_when_events_were_queued_and_no_sender_waited(self) -> None:
        assert self.late_slots(starved=False) == 1
        assert self.late_slots(starved=True) > 1


class _Recording:
    """A pacer that grants a slot only once ``open`` is set, and records ``took``."""

    def __init__(self) -> None:
        self.open = False
        self.took_calls: list[tuple[bool, int, float]] = []

    def turn(self, now: float) -> float:
        return 0.0 if self.open else 10.0

    def took(self, now: float, waited: bool, spare: int, waiting_since: float) -> None:
        self.took_calls.append((waited, spare, waiting_since))

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
        assert pacer.took_calls == [(False, 0, 12.5)]

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
        assert [(waited, spare) for waited, spare, _ in calls] == [(True, 2), (True, 1), (True, 0)]
        assert sorted(since for _, _, since in calls) == [0.0, 1.0, 2.0]
