"""Request-level figures for stats() and health(): latency histograms, last errors, success."""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from typing import Optional

import attrs

#: Seconds from the start of a request to its answer (or its failure).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Seconds from an event's ``date`` (the moment of ``track()`` unless given) to its 2xx:
#: queueing, pacing, 429 pauses and retries included, so the range reaches an hour.
LATENCY_BUCKETS = (
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)

# What an attempt that was not a 2xx came to, for last_errors (besides the fixed failure
# reasons of the counters): retried after backoff, or a 429 that paused every sender.
RETRYABLE = "retryable"
RATE_LIMITED = "rate_limited"
# PX answered and refused the event itself (a 400, say): the event's fault, no outage.
# (A 401/403 is one: nothing will be delivered until the key is fixed.)
_NOT_AN_OUTAGE = frozenset({"rejected"})


@attrs.frozen(kw_only=True)
class Histogram:
    """A snapshot of a histogram with fixed buckets: ``counts[i]`` observations were at
    most ``bounds[i]`` (and above the bound before it); the last count is above every
    bound. ``cumulative()`` gives the Prometheus form."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float
    count: int

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations at most that)``, ending with ``(inf, count)``."""
        total = 0
        pairs: list[tuple[float, int]] = []
        for bound, count in zip((*self.bounds, math.inf), self.counts):
            total += count
            pairs.append((bound, total))
        return pairs


@attrs.frozen(kw_only=True)
class LastError:
    """The most recent error of one reason: when (epoch seconds), the HTTP status if
    there was an answer, and the redacted server message or exception text."""

    time: float
    status_code: Optional[int] = None
    message: Optional[str] = None


@attrs.frozen(kw_only=True)
class Health:
    """Whether the tracker is delivering, for readiness probes (``bool(health)`` is
    ``healthy``). Ages are seconds; ``paused_until`` is epoch seconds."""

    healthy: bool
    #: Why it is not healthy (None when it is): a short sentence for a probe's log.
    reason: Optional[str]
    #: Seconds since the last 2xx; None before the first one.
    last_success_age: Optional[float]
    #: Seconds since the first failed attempt after the last 2xx; None while succeeding.
    failing_for: Optional[float]
    pending: int
    #: Until when every sender waits out a 429 (epoch seconds); None when not paused.
    paused_until: Optional[float]
    #: Sender threads running (0 in sync_mode and dry runs, which need none).
    senders_alive: int

    def __bool__(self) -> bool:
        return self.healthy


def empty_histogram(bounds: tuple[float, ...]) -> Histogram:
    return Histogram(bounds=bounds, counts=(0,) * (len(bounds) + 1), sum=0.0, count=0)


class _Buckets:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        value = max(0.0, value)  # a clock step backwards must not make a negative sample
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def snapshot(self) -> Histogram:
        return Histogram(
            bounds=self.bounds, counts=tuple(self.counts), sum=self.sum, count=self.count
        )


class Telemetry:
    """Mutated and read under the buffer's lock, like the counters it sits beside, so a
    snapshot's delivery histogram counts exactly the delivered events."""

    __slots__ = ("failing_since", "last_errors", "last_success", "latency", "requests")

    def __init__(self) -> None:
        self.requests = _Buckets(REQUEST_BUCKETS)
        self.latency = _Buckets(LATENCY_BUCKETS)
        self.last_errors: dict[str, LastError] = {}
        self.last_success: Optional[float] = None  # monotonic
        self.failing_since: Optional[float] = None  # monotonic

    def attempt(
        self,
        now: float,
        wall: float,
        duration: float,
        error: Optional[str],
        status: Optional[int],
        message: Optional[str],
    ) -> None:
        """One request ended (``error`` None: a 2xx)."""
        self.requests.observe(duration)
        if error is None:
            self.last_success = now
            self.failing_since = None
            return
        if self.failing_since is None and error not in _NOT_AN_OUTAGE:
            self.failing_since = now
        self.last_errors[error] = LastError(time=wall, status_code=status, message=message)

    def error(self, reason: str, wall: float) -> None:
        """An event failed or was dropped for ``reason``, with no request of its own."""
        self.last_errors[reason] = LastError(time=wall)

    def delivered(self, wall: float, date_ms: int) -> None:
        self.latency.observe(wall - date_ms / 1000.0)

    def figures(self) -> tuple[Histogram, Histogram, Mapping[str, LastError]]:
        return self.latency.snapshot(), self.requests.snapshot(), dict(self.last_errors)
