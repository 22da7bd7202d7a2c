"""Prometheus metrics of a tracker: a collector that reads stats() at scrape time."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Optional

from tracker._telemetry import Histogram
from tracker._tracker import Tracker
from tracker.integrations._figures import Figures, Source, missing_extra, read

try:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import REGISTRY, CollectorRegistry
except ImportError as exc:  # the extra is not installed
    raise missing_extra(__name__, "prometheus_client", "prometheus") from exc

__all__ = ["TrackerCollector", "register"]

PREFIX = "px_tracker"


def register(
    tracker: Optional[Tracker] = None, registry: Optional[CollectorRegistry] = None
) -> TrackerCollector:
    """Register the metrics of ``tracker`` (default: the process-wide one of
    ``tracker.configure()``, whichever it is at each scrape) on ``registry`` (default:
    prometheus_client's global one). Returns the collector, for ``unregister``."""
    collector = TrackerCollector(tracker)
    (REGISTRY if registry is None else registry).register(collector)
    return collector


class TrackerCollector:
    """Reads one stats() snapshot per scrape: every figure of a scrape is from the same
    moment, so ``tracked == delivered + failed + dropped + pending`` holds in it."""

    def __init__(self, tracker: Optional[Tracker] = None) -> None:
        self._source = Source(tracker)

    def describe(self) -> list[Metric]:
        """The metric names, without reading the tracker (checked for clashes on
        registration)."""
        return list(_families(None))

    def collect(self) -> Iterator[Metric]:
        tracker = self._source.get()
        if tracker is None:
            return iter(())  # nothing configured yet (or the tracker is gone): no figures
        return _families(read(tracker))


def _families(figures: Optional[Figures]) -> Iterator[Metric]:
    events = CounterMetricFamily(
        f"{PREFIX}_events",
        "Events by outcome: tracked (accepted by track()), delivered, failed and dropped "
        "by reason; tracked == delivered + failed + dropped + pending_events.",
        labels=["outcome", "reason"],
    )
    pending = GaugeMetricFamily(
        f"{PREFIX}_pending_events",
        "Events accepted and not settled yet: waiting, in flight or waiting to retry.",
    )
    capacity = GaugeMetricFamily(
        f"{PREFIX}_queue_capacity_events", "max_queue_size: room for pending events."
    )
    retries = CounterMetricFamily(f"{PREFIX}_retries", "Attempts scheduled again after a failure.")
    limited = CounterMetricFamily(f"{PREFIX}_rate_limited", "429 answers from PX.")
    latency = HistogramMetricFamily(
        f"{PREFIX}_delivery_latency_seconds",
        "Seconds from an event's date (the moment of track() unless given) to its 2xx.",
    )
    duration = HistogramMetricFamily(
        f"{PREFIX}_request_duration_seconds",
        "Seconds from the start of a request to its answer or its failure.",
    )
    healthy = GaugeMetricFamily(
        f"{PREFIX}_healthy", "1 when health() says the tracker is delivering, else 0."
    )
    senders = GaugeMetricFamily(f"{PREFIX}_senders", "Sender threads running.")
    last_error = GaugeMetricFamily(
        f"{PREFIX}_last_error_timestamp_seconds",
        "When the last error of each reason happened (Unix time).",
        labels=["reason"],
    )
    fixed: list[Metric] = [events, pending, capacity, retries, limited, latency, duration]
    fixed += [healthy, senders, last_error]
    if figures is None:
        yield from fixed
        return
    stats = figures.stats
    for outcome, reason, count in figures.outcomes:
        events.add_metric([outcome, reason], count)
    pending.add_metric([], stats.pending)
    capacity.add_metric([], figures.capacity)
    retries.add_metric([], stats.retries)
    limited.add_metric([], stats.rate_limited)
    _histogram(latency, stats.delivery_latency)
    _histogram(duration, stats.request_duration)
    healthy.add_metric([], 1 if figures.health.healthy else 0)
    senders.add_metric([], figures.health.senders_alive)
    for reason, error in sorted(stats.last_errors.items()):
        last_error.add_metric([reason], error.time)
    yield from fixed
    if stats.send_rate is not None:
        rate = GaugeMetricFamily(
            f"{PREFIX}_send_rate", "Requests per second the senders pace at now."
        )
        rate.add_metric([], stats.send_rate)
        yield rate
    if figures.limiter_fallbacks is not None:
        fallbacks = CounterMetricFamily(
            f"{PREFIX}_limiter_fallbacks",
            "Times the shared limiter was unreachable and local pacing took over.",
        )
        fallbacks.add_metric([], figures.limiter_fallbacks)
        yield fallbacks
    if figures.spooled is not None:
        spooled = GaugeMetricFamily(
            f"{PREFIX}_spooled_events", "Events accepted, not settled, kept on disk."
        )
        spooled.add_metric([], figures.spooled)
        yield spooled


def _histogram(family: HistogramMetricFamily, histogram: Histogram) -> None:
    buckets = [
        ("+Inf" if math.isinf(bound) else repr(float(bound)), count)
        for bound, count in histogram.cumulative()
    ]
    family.add_metric([], buckets, histogram.sum)
