"""When the next request may start: client-side pacing that learns the server's limit.

A ``Pacer`` answers three questions for the senders of one tracker, under the buffer's
lock (as ``Counters`` is; ``written`` and ``refill`` are the calls made without it): may a
request start now (``turn``), what a 429 means for everyone (``rate_limited``), and how
many requests should be in flight (``concurrency``). The in-process ``LocalPacer`` is the
one implementation here; the fleet limiter (Redis) keeps the same state across processes
behind the same interface.

Closed loop, because PX does not document its limiter's algorithm or burst:

- **Slots**: a GCRA on the moments requests actually start (not when they were planned),
  at the current rate, with bursts of ``BURST_SECONDS`` worth. A sender that starts late
  does not let the next one start early: a downstream leaky bucket sees what we planned.
  One at a time (no bursts), a request also waits for the interval after the server may
  have seen the one before (up to its answer), so a slow answer does not make it early,
  and after the one before actually left (its last byte written), so a sender that took
  its slot and then waited for the GIL does not send the next two requests close
  together.
- **Bursts**: none for the first ``BURST_WARMUP`` of sending (a backlog at start goes
  out evenly while the first answers tell the round trip and the senders grow), then up
  to ``BURST_SECONDS`` worth, earned by idle time only: when bursts become allowed the
  plan moves by the tolerance it gains, so senders that never stopped do not burst. The
  same credit lets a sender that took its slot late (the GIL, or no sender free) be
  caught up by the next ones, which holds the rate in a busy host app. Any 429 stops
  bursts (and so catching up) for ``BURST_MEMORY`` seconds; a 429 while bursts were
  allowed does no more: the server may only tolerate smaller bursts than ours (at 1 ms
  of round trip, one at a time then holds nginx burst=0's rate).
- **429**: every sender pauses until Retry-After. A 429 to a request sent one at a time,
  planned after our last reaction and a second or more after the last decrease, is new
  evidence about the rate: after ``NEAR_REQUESTS`` or more requests started at that
  rate since the reaction, or the first time, the limit is near and the rate drops to
  ``DECREASE_NEAR`` of what it was; refused at once, it is far and the rate drops to
  ``DECREASE``. Planning restarts at the end of the pause with no burst credit, so the
  pause is not followed by a burst.
- **Probing**: then the rate climbs back, quickly to ``PLATEAU`` of the rate that drew
  the 429, slowly beyond it, up to ``rate_limit`` (the ceiling, never exceeded). Each
  probe past the real limit costs one pause; the slow phase keeps those rare. A server
  that refuses evenly spaced requests has no burst to absorb our timing jitter (and
  nginx's millisecond clock adds its own), so the steps leave ~15 % of margin: at 0.9
  and 0.95 of the refused rate, nginx burst=0 refused again every second or two.
- **Concurrency**: requests in flight between Little's law on the shortest recent and on
  the mean round trip (with headroom, within the ``workers`` cap), set by shortfalls of
  the planned rate while events wait and by senders left waiting in line
  (``tracker._concurrency``), so 200/s holds at any round trip with no more threads
  than it needs.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from typing import Callable, Optional, Protocol

from tracker._clock import Clock
from tracker._concurrency import Concurrency

BURST_SECONDS = 0.05  # the largest burst, in seconds' worth of the rate
DECREASE = 0.5  # the rate after a 429 soon after (re)starting, as a share of the rate before
DECREASE_NEAR = 0.8  # the same when the refused request was the NEAR_REQUESTS-th or later
NEAR_REQUESTS = 5
PLATEAU = 0.85  # fast recovery up to this share of the rate that drew the 429...
FAST_RECOVERY = 0.2  # ...at this share of the ceiling per second,
SLOW_RECOVERY = 0.001  # then slowly beyond it (0.2/s per second at 200/s), up to the ceiling
MIN_RATE_SHARE = 0.01  # never below 1% of the ceiling
DECREASE_EVERY = 1.0  # seconds: at most one decrease per second, since limits are per second
BURST_WARMUP = 1.0  # seconds of sending before the first bursts
BURST_MEMORY = 300.0  # seconds after a 429 to a burst before bursts are allowed again
# Answers before the fastest round trip seen is trusted: the first ones carry a connection's
# set-up and the host's start (2,000 track() calls holding the GIL), and an overestimate
# would let the next request start early.
TRUSTED_AFTER = 3
RECENT_STARTS = 512  # slot times kept, for "how many started before the refused one"
ACHIEVED_WINDOW = 0.25  # seconds of starts before a refused request: the rate refused...
ACHIEVED_SHARE = 0.8  # ...unless below this share of the planned one (demand, not rate)


class Pacer(Protocol):
    """The pacing seam. Every method runs under the buffer's lock except ``refill`` and
    ``written``."""

    def turn(self, now: float) -> float:
        """0.0 when a request may start now (the slot is taken), else seconds to wait."""

    def took(self, now: float, spare: int, waiting_since: float) -> None:
        """The slot ``turn`` just gave was taken, with ``spare`` other senders still in
        line for one; events had waited for a sender since ``waiting_since``."""

    def paused_until(self) -> float:
        """The monotonic time before which no request may start (0: not paused)."""

    def rate_limited(self, now: float, sent_at: float, pause: float) -> None:
        """A 429 answered a request started at ``sent_at``: pause everyone ``pause`` s."""

    def answered(self, now: float, sent_at: float) -> None:
        """Any other answer to a request started at ``sent_at`` (its latency)."""

    def written(self, sent_at: float, at: float) -> None:
        """The request started at ``sent_at`` left at ``at`` (its last byte written).
        Called on the sender's thread without the buffer's lock: it only records."""

    def concurrency(self) -> int:
        """How many requests should be in flight at most, now."""

    def rate(self, now: float) -> Optional[float]:
        """The sending rate in effect (requests per second), None when not paced."""

    def fallbacks(self) -> Optional[int]:
        """Times a shared limiter fell back to local pacing; None without one."""

    def wants_refill(self) -> bool:
        """True when ``turn`` waits on something only ``refill`` can bring (Redis)."""

    def refill(self) -> None:
        """Blocking work outside the buffer's lock (a round trip to shared state)."""


class _Earliest:
    """When the server may have seen our last request, at the earliest: the latest of some
    moments (answers, or requests leaving) less the shortest delay seen before one (a
    round trip, or a slot-to-wire time), trusted from the ``TRUSTED_AFTER``-th sample on
    (the first ones carry a connection's set-up and the host's start)."""

    __slots__ = ("last", "samples", "shortest")

    def __init__(self) -> None:
        self.last = -math.inf
        self.samples = 0
        self.shortest = math.inf

    def add(self, started: float, at: float) -> None:
        self.samples += 1
        self.shortest = min(self.shortest, max(0.0, at - started))
        self.last = max(self.last, at)

    def moment(self) -> float:
        return self.last - (self.shortest if self.samples >= TRUSTED_AFTER else 0.0)


class LocalPacer:
    """The in-process pacer: see the module docstring."""

    def __init__(self, rate_limit: Optional[float], workers: int) -> None:
        self._ceiling = rate_limit
        self._burst0 = 1 if rate_limit is None else max(1, round(BURST_SECONDS * rate_limit))
        # One at a time until BURST_WARMUP has passed without a 429: a backlog at start
        # goes out evenly, and only later idle time earns burst credit.
        self._burst = 1
        self._bursts_from: Optional[float] = None
        self._tat = 0.0  # GCRA: the theoretical arrival time of the next request
        self._paused_until = 0.0
        self._reacted_at = -math.inf  # the last reaction to a 429 (bursts or rate)
        self._recover_from = -math.inf
        self._starts: deque[float] = deque(maxlen=RECENT_STARTS)  # when slots were taken
        self._decreased_at = -math.inf  # the last decrease, and the rates around it
        self._rate_after = rate_limit or 0.0
        self._plateau = rate_limit or 0.0  # where the fast recovery ends
        self._senders = Concurrency(rate_limit, workers)
        self._granted = False  # turn() gave a slot that took() has not been told of
        self._interval = 0.0  # the interval in effect at that slot
        self._answered = _Earliest()  # from the answers (start to answer: round trips)
        self._left = _Earliest()  # from the requests leaving (slot to last byte written)
        # (started, written) of each request that left: appended by written() without the
        # lock (deque.append is atomic), taken in turn(), so that no departure is lost.
        self._departures: deque[tuple[float, float]] = deque()

    # -- the rate --------------------------------------------------------------------------

    def rate(self, now: float) -> Optional[float]:
        ceiling = self._ceiling
        if ceiling is None:
            return None
        if self._decreased_at == -math.inf:
            return ceiling
        # Recovery starts when the pause that came with the decrease ends.
        since = max(0.0, now - self._recover_from)
        rate = self._rate_after
        plateau = min(ceiling, self._plateau)
        fast = FAST_RECOVERY * ceiling * since
        if rate + fast <= plateau:
            return rate + fast
        # Past the plateau: the slow phase, from the moment the fast one reached it.
        reached = max(0.0, plateau - rate) / (FAST_RECOVERY * ceiling)
        return min(ceiling, max(rate, plateau) + SLOW_RECOVERY * ceiling * (since - reached))

    def _burst_now(self, now: float, interval: float) -> int:
        if self._burst < self._burst0:
            if self._bursts_from is None:
                self._bursts_from = now + BURST_WARMUP
            if now >= self._bursts_from:
                # Bursts are allowed from now on, but credit is earned by idle time, not
                # granted: the tolerance grows and the plan moves by as much, so what
                # was due goes out as before (after a warm-up with a backlog, or a pause
                # that outlasted it) and only idle time since the last slot counts.
                self._tat = max(now, self._tat + (self._burst0 - 1) * interval)
                self._burst = self._burst0
        return self._burst

    # -- the seam --------------------------------------------------------------------------

    def turn(self, now: float) -> float:
        if now < self._paused_until:
            return self._paused_until - now
        rate = self.rate(now)
        if rate is None:
            return 0.0
        interval = 1.0 / rate
        tolerance = (self._burst_now(now, interval) - 1) * interval
        due = self._tat - tolerance  # the earliest this request may start (GCRA)
        departures = self._departures
        while departures:
            self._left.add(*departures.popleft())
        if tolerance == 0.0:
            # One at a time: the server may have seen the last request as late as just
            # before it answered. A slow answer (a busy server) must not make the next
            # request look early to it. (The longer of the two waits: a sender woken for
            # the first would only find the second and sleep again.)
            # And the server saw it no earlier than it left: the next one leaves an
            # interval after that (it takes at least the shortest slot-to-wire time).
            seen = max(self._answered.moment(), self._left.moment())
            due = max(due, seen + interval)
        if due > now:
            return due - now
        self._granted, self._interval = True, interval  # for took()
        self._tat = max(self._tat, now) + interval
        self._starts.append(now)
        return 0.0

    def took(self, now: float, spare: int, waiting_since: float) -> None:
        if not self._granted:  # unpaced, or a slot another pacer gave (a fleet fallback)
            return
        self._granted = False
        self._senders.took(now, self._interval, spare, waiting_since)

    def paused_until(self) -> float:
        return self._paused_until

    def written(self, sent_at: float, at: float) -> None:
        if self._ceiling is not None:  # unpaced, turn() never takes them
            self._departures.append((sent_at, at))

    def rate_limited(self, now: float, sent_at: float, pause: float) -> None:
        ceiling = self._ceiling
        # Evidence only from requests planned after our last reaction to a 429.
        if ceiling is not None and sent_at >= self._reacted_at:
            bursting = self._burst > 1
            if self._burst0 > 1:
                # No bursts for a while, whichever way we were sending: a server that
                # refuses requests sent one at a time would refuse bursts too.
                self._burst = 1
                self._bursts_from = now + BURST_MEMORY
            if bursting:
                # While bursting: the server tolerates smaller bursts than ours. Stop
                # bursting first; the rate itself is not in question yet.
                self._reacted_at = now
            elif now - self._decreased_at >= DECREASE_EVERY:
                # One at a time and still refused: the rate is too high. At most once a
                # second, so that 429s unrelated to our rate cannot drive it down
                # faster than it recovers.
                self._decrease(now, sent_at, pause, ceiling)
        self._answered.last = max(self._answered.last, now)
        self._paused_until = max(self._paused_until, now + pause)
        # Re-plan from the end of the pause with no burst credit: the slots that came due
        # during the pause must not all go out together when it ends.
        rate = self.rate(now)
        if rate is not None:
            self._tat = max(self._tat, self._paused_until + (self._burst - 1) / rate)
        self._senders.restart(self._paused_until)

    def _decrease(self, now: float, sent_at: float, pause: float, ceiling: float) -> None:
        before = self.rate(now) or ceiling
        # Refused after a few requests at this rate went through (the refused one the
        # NEAR_REQUESTS-th or later since our last reaction), or for the first time at
        # the configured ceiling (jitter at the documented limit): the limit is near, step
        # down a little. Refused at once after a reaction (a server well below our rate
        # refuses the second request): far, halve. Requests started count, not answers:
        # at a long round trip the first answers after a pause come a round trip late.
        reacted = self._reacted_at
        started = [t for t in self._starts if reacted <= t <= sent_at]
        near = self._decreased_at == -math.inf or len(started) >= NEAR_REQUESTS
        self._rate_after = max(
            MIN_RATE_SHARE * ceiling, (DECREASE_NEAR if near else DECREASE) * before
        )
        # The fast recovery ends under the refused rate, and under the rate requests
        # really started at, which the waits for answers and writes keep below the
        # planned one one at a time (~0.93x at 100/s): refused at a planned 107/s by a
        # server that admits 100, the plateau is under 100, not at 102. (Far lower, it
        # was the demand that was lower, not the rate: then it says nothing.)
        plateau = PLATEAU * before
        recent = [t for t in started if t >= sent_at - ACHIEVED_WINDOW]
        if len(recent) >= NEAR_REQUESTS and recent[-1] > recent[0]:
            achieved = (len(recent) - 1) / (recent[-1] - recent[0])
            if achieved >= ACHIEVED_SHARE * before:
                plateau = min(plateau, achieved)
        self._plateau = max(self._rate_after, plateau)
        self._decreased_at = self._reacted_at = now
        self._recover_from = max(self._paused_until, now + pause)

    def answered(self, now: float, sent_at: float) -> None:
        latency = max(0.0, now - sent_at)
        self._answered.add(sent_at, now)
        self._senders.answered(latency)

    def concurrency(self) -> int:
        return self._senders.limit()

    def fallbacks(self) -> Optional[int]:
        return None

    def wants_refill(self) -> bool:
        return False

    def refill(self) -> None:
        return None


class Turns:
    """The line of senders waiting for the pacer's slot, first come first served: only the
    first waits for the time, the others for it to go (one wake-up per request, not one
    per waiting sender). Used with the buffer's lock held."""

    def __init__(self, lock: threading.Lock, clock: Clock, pacer: Pacer) -> None:
        self._lock = lock
        self._clock = clock
        self._pacer = pacer
        self._line: deque[threading.Condition] = deque()

    def wait(self, wanted: Callable[[], bool], waiting_since: float) -> bool:
        """Wait for a slot while ``wanted()``; True when the slot is taken. Events have
        waited for a sender since ``waiting_since`` (monotonic)."""
        clock = self._clock
        pacer = self._pacer
        line = self._line
        if not wanted():
            return False
        if not line:
            now = clock.monotonic()
            if pacer.turn(now) <= 0:
                pacer.took(now, 0, waiting_since)
                return True
        me = threading.Condition(self._lock)
        line.append(me)
        try:
            while wanted():
                if line[0] is not me:
                    clock.wait(me, None)
                    continue
                now = clock.monotonic()
                wait = pacer.turn(now)
                if wait <= 0:
                    pacer.took(now, len(line) - 1, waiting_since)
                    return True
                if pacer.wants_refill():
                    self._lock.release()
                    try:
                        pacer.refill()
                    finally:
                        self._lock.acquire()
                    continue
                clock.wait(me, wait)
            return False
        finally:
            line.remove(me)
            if line:
                line[0].notify()

    def wake_all(self) -> None:
        for waiter in self._line:
            waiter.notify()
