"""OpenTelemetry metrics of a tracker: observable instruments read from stats() at collection."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Callable, Optional

from tracker._core import VERSION
from tracker._tracker import Tracker
from tracker.integrations._figures import Figures, Source, missing_extra, read

try:
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
except ImportError as exc:  # the extra is not installed
    raise missing_extra(__name__, "opentelemetry-api", "opentelemetry") from exc

__all__ = ["instrument"]

# Named after OpenTelemetry's SDK self-metrics (otel.sdk.processor.*.processed with
# error.type, ...queue.size, ...queue.capacity), in our own namespace.
PROCESSED = "px_tracker.event.processed"
TRACKED = "px_tracker.event.tracked"
QUEUE_SIZE = "px_tracker.queue.size"
QUEUE_CAPACITY = "px_tracker.queue.capacity"
RETRIES = "px_tracker.request.retries"
RATE_LIMITED = "px_tracker.request.rate_limited"
SENDERS = "px_tracker.sender.count"
HEALTHY = "px_tracker.healthy"
RECOVERED = "px_tracker.event.recovered"
SPOOLED = "px_tracker.spool.size"
LIMITER_FALLBACKS = "px_tracker.limiter.fallbacks"
OUTCOME = "px_tracker.outcome"
ERROR_TYPE = "error.type"

#: A snapshot this young (seconds) is reused by the instruments after the first one, so
#: that one collection shows one moment and the invariant holds across instruments.
_REUSE_FOR = 1.0


def instrument(
    tracker: Optional[Tracker] = None, meter_provider: Optional[MeterProvider] = None
) -> None:
    """Create observable instruments for ``tracker`` (default: the process-wide one,
    whichever it is at each collection) on ``meter_provider`` (default: the global one).

    ``px_tracker.event.processed`` counts settled events: delivered without
    ``error.type``, failed and dropped with their reason as ``error.type`` (and
    ``px_tracker.outcome`` saying which); ``px_tracker.event.tracked`` counts accepted
    ones, so ``tracked == processed + queue.size`` in every collection.
    """
    provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
    meter = provider.get_meter("px-tracker", VERSION)
    snapshots = _Snapshots(Source(tracker))
    first = snapshots.fresh
    again = snapshots.recent
    meter.create_observable_counter(
        TRACKED,
        [_observe(first, lambda f: [Observation(f.stats.tracked)])],
        unit="{event}",
        description="Events accepted by track().",
    )
    meter.create_observable_counter(
        PROCESSED,
        [_observe(again, _processed)],
        unit="{event}",
        description="Events settled: delivered (no error.type), failed or dropped "
        "(error.type: the reason).",
    )
    meter.create_observable_up_down_counter(
        QUEUE_SIZE,
        [_observe(again, lambda f: [Observation(f.stats.pending)])],
        unit="{event}",
        description="Events accepted and not settled yet: waiting, in flight or waiting to retry.",
    )
    meter.create_observable_up_down_counter(
        QUEUE_CAPACITY,
        [_observe(again, lambda f: [Observation(f.capacity)])],
        unit="{event}",
        description="max_queue_size: room for pending events.",
    )
    meter.create_observable_counter(
        RETRIES,
        [_observe(again, lambda f: [Observation(f.stats.retries)])],
        unit="{request}",
        description="Attempts scheduled again after a failure.",
    )
    meter.create_observable_counter(
        RATE_LIMITED,
        [_observe(again, lambda f: [Observation(f.stats.rate_limited)])],
        unit="{request}",
        description="429 answers from PX.",
    )
    meter.create_observable_gauge(
        SENDERS,
        [_observe(again, lambda f: [Observation(f.health.senders_alive)])],
        unit="{thread}",
        description="Sender threads running.",
    )
    meter.create_observable_gauge(
        HEALTHY,
        [_observe(again, lambda f: [Observation(1 if f.health.healthy else 0)])],
        description="1 when health() says the tracker is delivering, else 0.",
    )
    # The spool's and the shared limiter's figures, on trackers that have them.
    meter.create_observable_counter(
        RECOVERED,
        [_observe(again, lambda f: _maybe(f.recovered))],
        unit="{event}",
        description="Events adopted from the spool of processes gone before.",
    )
    meter.create_observable_up_down_counter(
        SPOOLED,
        [_observe(again, lambda f: _maybe(f.spooled))],
        unit="{event}",
        description="Events accepted, not settled, kept on disk.",
    )
    meter.create_observable_counter(
        LIMITER_FALLBACKS,
        [_observe(again, lambda f: _maybe(f.limiter_fallbacks))],
        description="Times the shared limiter was unreachable and local pacing took over.",
    )


class _Snapshots:
    """One tracker read per collection, shared by the instruments of that collection."""

    def __init__(self, source: Source) -> None:
        self._source = source
        self._lock = threading.Lock()
        self._figures: Optional[Figures] = None
        self._at = -_REUSE_FOR

    def fresh(self) -> Optional[Figures]:
        """For the first instrument of a collection (the SDK observes instruments in the
        order they were created)."""
        tracker = self._source.get()
        figures = None if tracker is None else read(tracker)
        with self._lock:
            self._figures, self._at = figures, time.monotonic()
        return figures

    def recent(self) -> Optional[Figures]:
        with self._lock:
            if time.monotonic() - self._at < _REUSE_FOR:
                return self._figures
        return self.fresh()


def _observe(
    snapshot: Callable[[], Optional[Figures]],
    observations: Callable[[Figures], Iterable[Observation]],
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        figures = snapshot()
        return [] if figures is None else list(observations(figures))

    return callback


def _maybe(value: Optional[int]) -> list[Observation]:
    return [] if value is None else [Observation(value)]


def _processed(figures: Figures) -> list[Observation]:
    observations: list[Observation] = []
    for outcome, reason, count in figures.outcomes:
        if outcome == "delivered":
            observations.append(Observation(count, {OUTCOME: outcome}))
        elif outcome in ("failed", "dropped"):
            observations.append(Observation(count, {OUTCOME: outcome, ERROR_TYPE: reason}))
    return observations
