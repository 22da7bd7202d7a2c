"""How many requests should be in flight: Little's law bounds the number, evidence sets it.

Little's law (rate x round trip) gives the senders a rate needs. But the round trip a
sender measures includes its waits for the GIL, and those grow with the number of threads
that wait: in a busy host app a 1 ms round trip reads 10-20 ms, and sizing on it ran 2-3
senders where one delivers the rate, each extra one taking the GIL from the app once more
per event. And the shortest round trip alone is no answer: over the internet round trips
vary, and sized on the shortest the senders deliver half the rate. So Little's law bounds
the count, with ``HEADROOM``: on the mean round trip (an EWMA that follows rises fast) it
is the most ever run, on the shortest recent one the least. In between, the count follows
what the pacer sees, a window at a time:

- **a shortfall adds senders**: while events waited for the whole window, slots that
  started later than planned (the planned intervals add up to less than the window) left
  the rate unserved; past ``SHORTFALL_GROW`` of the window, senders are added in proportion.
  (Some shortfalls more senders do not cure, a sender waking late for the GIL say: then
  the count climbs to the most, Little's law on the mean, and stays.)
- **no shortfall takes one away**, or the senders that stood spare in line at every
  slot, but not within ``SHRINK_HOLD`` of adding some, so that the count does not swing.

The count is kept as a share of the most, so a round trip that grows tenfold grows it
too. Used under the buffer's lock, by the pacer. ``limit()`` is read on every
``track()``: it is a stored number, recomputed on answers and at the end of windows.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Optional

HEADROOM = 1.5  # requests in flight beyond what Little's law needs at the mean latency
LATENCY_UP = 0.5  # EWMA weights: latency rises are followed fast, falls slowly
LATENCY_DOWN = 0.1
RECENT_LATENCIES = 32  # round trips the shortest recent one is taken from
WINDOW = 0.5  # seconds a window lasts at least...
WINDOW_ROUND_TRIPS = 2.0  # ...and at least this many (mean) round trips
WINDOW_SLOTS = 10  # slots a window must hold before spare senders go
SHORTFALL_GROW = 0.02  # a shortfall, as a share of a window, that adds senders
SHORTFALL_SHRINK = 0.005  # the largest shortfall after which senders may go
SHRINK_HOLD = 5.0  # seconds after adding senders before any may go


class Concurrency:
    """The number of requests in flight for one pacer: see the module docstring."""

    __slots__ = (
        "_cap",
        "_ceiling",
        "_from",
        "_hold_until",
        "_latency",
        "_limit",
        "_planned",
        "_recent",
        "_share",
        "_slots",
        "_spare",
        "_waiting_from",
    )

    def __init__(self, ceiling: Optional[float], cap: int) -> None:
        self._ceiling = ceiling  # the rate to size for: what the pacer may climb back to
        self._cap = cap
        self._latency: Optional[float] = None  # EWMA of seconds from start to answer
        self._recent: deque[float] = deque(maxlen=RECENT_LATENCIES)
        self._share = 1.0  # of the most (Little's law on the mean), set by evidence
        # Unpaced, the cap; paced, one at a time until the first answer tells the round trip.
        self._limit = cap if ceiling is None else 1
        self._hold_until = -math.inf
        self.restart(-math.inf)

    def limit(self) -> int:
        return self._limit

    def restart(self, at: float) -> None:
        """Start a new window at ``at`` (the end of a 429 pause: senders waiting through
        it are not spare, and slots it held back are no shortfall)."""
        self._from = at
        self._planned = 0.0  # the intervals planned between the slots taken since
        self._slots = 0
        self._spare = math.inf
        self._waiting_from = -math.inf  # the latest "events waited since" told

    def answered(self, latency: float) -> None:
        previous = self._latency
        if previous is None:
            self._latency = latency
        else:
            weight = LATENCY_UP if latency > previous else LATENCY_DOWN
            self._latency = previous + weight * (latency - previous)
        self._recent.append(latency)
        self._resize()

    def took(self, now: float, interval: float, spare: int, waiting_since: float) -> None:
        """A slot was taken at ``now``, an ``interval`` before the next one is planned,
        with ``spare`` senders still in line; events had waited since ``waiting_since``."""
        if now < self._from or self._ceiling is None or self._latency is None:
            return
        if self._from == -math.inf:
            self._from = now
            return
        self._slots += 1
        self._planned += interval
        self._spare = min(self._spare, spare)
        self._waiting_from = max(self._waiting_from, waiting_since)
        span = now - self._from
        if span >= max(WINDOW, WINDOW_ROUND_TRIPS * self._latency):
            self._judge(now, span)
            self.restart(now)

    def _judge(self, now: float, span: float) -> None:
        assert self._latency is not None
        most = self._sized(self._latency)
        current = self._limit
        # Demand that let the store run empty says nothing against the count.
        backlog = self._waiting_from <= self._from
        shortfall = max(0.0, span - self._planned) / span if backlog else 0.0
        if shortfall > SHORTFALL_GROW:
            wanted = max(current + 1, math.ceil(current * (1.0 + 2.0 * shortfall)))
            self._hold_until = now + SHRINK_HOLD
        elif (
            shortfall <= SHORTFALL_SHRINK
            and self._slots >= WINDOW_SLOTS
            and now >= self._hold_until
        ):
            wanted = current - max(1, int(min(self._spare, current)))
        else:
            return
        self._share = min(1.0, max(wanted, 1) / most)
        self._resize()

    def _sized(self, latency: float) -> int:
        assert self._ceiling is not None
        return max(1, min(self._cap, math.ceil(self._ceiling * latency * HEADROOM)))

    def _resize(self) -> None:
        if self._ceiling is None or self._latency is None:
            return
        most = self._sized(self._latency)
        least = min(most, self._sized(min(self._recent)))
        self._limit = max(least, min(most, math.ceil(most * self._share - 1e-9)))
