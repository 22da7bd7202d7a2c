"""Counters of what became of every tracked event, and the frozen snapshot stats() returns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import attrs

from tracker._telemetry import (
    LATENCY_BUCKETS,
    REQUEST_BUCKETS,
    Histogram,
    LastError,
    Telemetry,
    empty_histogram,
)

# The fixed reasons. Dropped: never attempted to completion by our choice or the caller's.
QUEUE_OVERFLOW = "queue_overflow"
SHUTDOWN = "shutdown"
DRY_RUN = "dry_run"
SPOOL_FULL = "spool_full"  # spool_max_bytes reached (the overflow policy applied)
SPOOL_CORRUPT = "spool_corrupt"  # a spooled event that could not be read back
DROP_REASONS = (QUEUE_OVERFLOW, SHUTDOWN, DRY_RUN, SPOOL_FULL, SPOOL_CORRUPT)
# Failed: PX said no, or kept failing until the retry budget ran out.
REJECTED = "rejected"
UNAUTHORIZED = "unauthorized"
RETRIES_EXHAUSTED = "retries_exhausted"
FAIL_REASONS = (REJECTED, UNAUTHORIZED, RETRIES_EXHAUSTED)


@attrs.frozen(kw_only=True)
class Stats:
    """A consistent snapshot:
    ``tracked + recovered == delivered + failed + dropped + pending``."""

    tracked: int
    delivered: int
    failed: int
    dropped: int
    pending: int
    retries: int
    rate_limited: int
    failed_by_reason: Mapping[str, int]
    dropped_by_reason: Mapping[str, int]
    #: The rate the senders pace at now (requests per second), below ``rate_limit`` while
    #: the tracker backs off after 429s; None when pacing is off.
    send_rate: Optional[float] = None
    #: Seconds from each delivered event's ``date`` (the moment of ``track()`` unless
    #: given) to its 2xx; ``count == delivered`` in every snapshot.
    delivery_latency: Histogram = attrs.field(factory=lambda: empty_histogram(LATENCY_BUCKETS))
    #: Seconds each request took, from its start to its answer or failure.
    request_duration: Histogram = attrs.field(factory=lambda: empty_histogram(REQUEST_BUCKETS))
    #: The most recent error of each reason seen: the failure reasons above,
    #: ``queue_overflow``, and ``retryable``/``rate_limited`` for attempts retried.
    last_errors: Mapping[str, LastError] = attrs.field(factory=dict)
    #: Events adopted from the spool files of processes gone before this one.
    recovered: int = 0
    #: Accepted, unsettled events that are on disk now (0 without a spool).
    spooled: int = 0
    #: Times the shared limiter (``limiter``) could not be reached and the tracker paced
    #: locally at its share instead; None without a shared limiter.
    limiter_fallbacks: Optional[int] = None


class Counters:
    """Running totals. Not thread-safe by itself: the buffer mutates and reads it under
    its own lock, together with the queue, which is what keeps the invariant exact."""

    __slots__ = (
        "delivered",
        "dropped",
        "failed",
        "rate_limited",
        "recovered",
        "retries",
        "telemetry",
        "tracked",
    )

    def __init__(self) -> None:
        self.tracked = 0
        self.recovered = 0
        self.delivered = 0
        self.retries = 0
        self.rate_limited = 0
        self.failed: dict[str, int] = dict.fromkeys(FAIL_REASONS, 0)
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.telemetry = Telemetry()

    def snapshot(
        self,
        pending: int,
        send_rate: Optional[float],
        spooled: int = 0,
        limiter_fallbacks: Optional[int] = None,
    ) -> Stats:
        latency, duration, last_errors = self.telemetry.figures()
        return Stats(
            tracked=self.tracked,
            delivered=self.delivered,
            failed=sum(self.failed.values()),
            dropped=sum(self.dropped.values()),
            pending=pending,
            retries=self.retries,
            rate_limited=self.rate_limited,
            failed_by_reason=dict(self.failed),
            dropped_by_reason=dict(self.dropped),
            send_rate=send_rate,
            delivery_latency=latency,
            request_duration=duration,
            last_errors=last_errors,
            recovered=self.recovered,
            spooled=spooled,
            limiter_fallbacks=limiter_fallbacks,
        )
