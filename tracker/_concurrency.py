"""How many requests should be in flight: Little's law bounds the number, evidence sets it.

Little's law (rate x round trip) gives the senders a rate needs. But the round trip a
sender measures includes its waits for the GIL, and those grow with the number of threads
that wait: in a busy host app a 1 ms round trip reads 10-20 ms, and sizing on it ran 3-10
senders where one or two deliver the rate, each extra one taking the GIL from the app.
And the shortest round trip alone is no answer: over the internet round trips vary, and
sized on the shortest the senders deliver half the rate. So Little's law bounds the count,
with ``HEADROOM``: on the mean round trip (an EWMA that follows rises fast) it is the most
ever run, on the shortest recent one the least. In between the count follows what the
pacer sees, a window at a time:

- **lost time adds senders**: a slot that came due while events were queued and no sender
  was waiting for it went by unused (the pacer plans from actual starts, so that time is
  lost to the rate). Lost past ``LOSS_GROW`` of a window adds senders in proportion.
- **spare senders go**: senders that waited in line behind the one taking a slot, at every
  slot of a window in which no time was lost, were not needed; that many go (not within
  ``SHRINK_HOLD`` of adding some, so that the count does not swing).

Used under the buffer's lock, by the pacer. ``limit()`` is read on every ``track()``:
it is a stored number, recomputed on answers and at the end of windows.
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
LOSS_GROW = 0.02  # lost time, as a share of a window, that adds senders
LOSS_SHRINK = 0.005  # the most lost in a window after which spare senders may go
SHRINK_HOLD = 5.0  # seconds after adding senders before any may go


class Concurrency:
    """The number of requests in flight for one pacer: see the module docstring."""

    __slots__ = (
        "_cap",
        "_ceiling",
        "_from",
        "_hold_until",
        "_latency",
        "_least",
        "_limit",
        "_lost",
        "_recent",
        "_slots",
        "_spare",
        "_want",
    )

    def __init__(self, ceiling: Optional[float], cap: int) -> None:
        self._ceiling = ceiling  # the rate to size for: what the pacer may climb back to
        self._cap = cap
        self._latency: Optional[float] = None  # EWMA of seconds from start to answer
        self._recent: deque[float] = deque(maxlen=RECENT_LATENCIES)
        self._want: Optional[int] = None  # set by evidence; None: the most
        self._least = 1
        # Unpaced, the cap; paced, one at a time until the first answer tells the round trip.
        self._limit = cap if ceiling is None else 1
        self._hold_until = -math.inf
        self.restart(-math.inf)

    def limit(self) -> int:
        return self._limit

    def restart(self, at: float) -> None:
        """Start a new window at ``at`` (the end of a 429 pause: senders waiting through
        it are not spare, and slots it held back are not lost)."""
        self._from = at
        self._lost = 0.0
        self._slots = 0
        self._spare = math.inf

    def answered(self, latency: float) -> None:
        previous = self._latency
        if previous is None:
            self._latency = latency
        else:
            weight = LATENCY_UP if latency > previous else LATENCY_DOWN
            self._latency = previous + weight * (latency - previous)
        self._recent.append(latency)
        self._resize()

    def took(self, now: float, lost: float, spare: int) -> None:
        """A slot was taken at ``now``, ``lost`` seconds after it came due with no sender
        waiting for it while events were queued, with ``spare`` senders still in line."""
        if now < self._from or self._ceiling is None or self._latency is None:
            return
        if self._from == -math.inf:
            self._from = now
            return
        self._slots += 1
        self._lost += lost
        self._spare = min(self._spare, spare)
        span = now - self._from
        if span >= max(WINDOW, WINDOW_ROUND_TRIPS * self._latency):
            self._judge(now, span)
            self.restart(now)

    def _judge(self, now: float, span: float) -> None:
        self._least = self._sized(min(self._recent))
        current = self._limit
        share = self._lost / span
        if share > LOSS_GROW:
            self._want = max(current + 1, math.ceil(current * (1.0 + 2.0 * share)))
            self._hold_until = now + SHRINK_HOLD
        elif share <= LOSS_SHRINK and self._slots >= WINDOW_SLOTS and now >= self._hold_until:
            # Enough: one fewer may be too (a probe, undone by the time it loses), and
            # the senders that stood spare at every slot certainly were.
            self._want = current - max(1, int(self._spare))
        self._resize()

    def _sized(self, latency: float) -> int:
        assert self._ceiling is not None
        return max(1, min(self._cap, math.ceil(self._ceiling * latency * HEADROOM)))

    def _resize(self) -> None:
        if self._ceiling is None or self._latency is None:
            return
        most = self._sized(self._latency)
        want = self._want
        if want is None:
            self._limit = most
        else:
            self._limit = max(min(self._least, most), min(want, most))
