"""Prometheus and OpenTelemetry see what stats() says, after 429s, 500s and an overflow."""

from __future__ import annotations

import gc
import math
import subprocess
import sys
from typing import Callable

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import tracker
from tracker import Stats, Tracker
from tracker.integrations import opentelemetry as px_otel
from tracker.integrations import prometheus as px_prometheus
from tracker.testing import FakePX

from ._faults import CAPACITY, PAUSE, faulted

MakeTracker = Callable[..., Tracker]
Points = dict[str, list[tuple[dict[str, object], float]]]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(registry: CollectorRegistry) -> Samples:
    """The registry's text exposition, parsed back: (name, labels) -> value."""
    text = generate_latest(registry).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def events(samples: Samples, outcome: str, reason: str = "") -> float:
    return samples[("px_tracker_events_total", (("outcome", outcome), ("reason", reason)))]


def scraped_invariant(samples: Samples) -> None:
    def total(outcome: str) -> float:
        return sum(
            value
            for (name, labels), value in samples.items()
            if name == "px_tracker_events_total" and ("outcome", outcome) in labels
        )

    pending = samples[("px_tracker_pending_events", ())]
    assert total("tracked") == total("delivered") + total("failed") + total("dropped") + pending


def matches_stats(samples: Samples, stats: Stats) -> None:
    assert events(samples, "tracked") == stats.tracked
    assert events(samples, "delivered") == stats.delivered
    for reason, count in stats.failed_by_reason.items():
        assert events(samples, "failed", reason) == count, reason
    for reason, count in stats.dropped_by_reason.items():
        assert events(samples, "dropped", reason) == count, reason
    assert samples[("px_tracker_pending_events", ())] == stats.pending
    assert samples[("px_tracker_retries_total", ())] == stats.retries
    assert samples[("px_tracker_rate_limited_total", ())] == stats.rate_limited
    assert samples[("px_tracker_queue_capacity_events", ())] == CAPACITY
    for name, histogram in (
        ("px_tracker_delivery_latency_seconds", stats.delivery_latency),
        ("px_tracker_request_duration_seconds", stats.request_duration),
    ):
        assert samples[(f"{name}_count", ())] == histogram.count
        assert samples[(f"{name}_sum", ())] == pytest.approx(histogram.sum)
        for bound, count in histogram.cumulative():
            le = "+Inf" if math.isinf(bound) else repr(float(bound))
            assert samples[(f"{name}_bucket", (("le", le),))] == count


class TestPrometheus:
    def test_a_scrape_after_faults_equals_stats_and_keeps_the_invariant(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        registry = CollectorRegistry()
        seen: list[Samples] = []

        def during_pause(t: Tracker) -> None:
            px_prometheus.register(t, registry)
            samples = scrape(registry)
            seen.append(samples)
            scraped_invariant(samples)
            assert samples[("px_tracker_pending_events", ())] == CAPACITY
            assert events(samples, "dropped", "queue_overflow") == 2

        t, clock = faulted(fake_px, make_tracker, during_pause)
        samples = scrape(registry)
        stats = t.stats()
        matches_stats(samples, stats)
        scraped_invariant(samples)
        assert events(samples, "failed", "retries_exhausted") == 2
        # One histogram sample per delivered event and per request, and the delivered
        # event waited out the pause.
        assert samples[("px_tracker_delivery_latency_seconds_count", ())] == 1
        assert samples[("px_tracker_delivery_latency_seconds_sum", ())] >= PAUSE
        assert samples[("px_tracker_request_duration_seconds_count", ())] == 4
        wall = clock.time()
        for reason in ("rate_limited", "retryable", "retries_exhausted", "queue_overflow"):
            when = samples[("px_tracker_last_error_timestamp_seconds", (("reason", reason),))]
            assert wall - 60 <= when <= wall, reason
        assert samples[("px_tracker_healthy", ())] == 1
        assert samples[("px_tracker_senders", ())] >= 1
        assert seen[0] != samples  # read at scrape time, not at registration

    def test_without_a_tracker_it_follows_the_process_wide_one(
        self, fake_px: FakePX, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(tracker._api, "_default", None)
        registry = CollectorRegistry()
        px_prometheus.register(registry=registry)
        # No tracker configured yet: the scrape works and builds none.
        assert not any(name.startswith("px_tracker") for name, _ in scrape(registry))
        assert tracker._api.current() is None
        first = tracker.configure("k", product_key="AP-1", base_url=fake_px.url)
        try:
            first.track("u1", "e")
            assert first.flush(10)
            assert events(scrape(registry), "delivered") == 1
            second = tracker.configure("k", product_key="AP-1", base_url=fake_px.url)
            assert events(scrape(registry), "delivered") == 0  # the new one's counters
            assert second is tracker.default_tracker()
        finally:
            tracker.shutdown(timeout=0)

    def test_registering_twice_on_one_registry_is_refused(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        registry = CollectorRegistry()
        t = make_tracker(fake_px.url)
        px_prometheus.register(t, registry)
        with pytest.raises(ValueError, match="px_tracker"):
            px_prometheus.register(t, registry)

    def test_the_registry_does_not_keep_a_tracker_alive(self, fake_px: FakePX) -> None:
        registry = CollectorRegistry()
        t = Tracker("k", product_key="AP-1", base_url=fake_px.url, flush_at_exit=False)
        px_prometheus.register(t, registry)
        t.shutdown(timeout=0)
        del t
        gc.collect()
        assert not any(name.startswith("px_tracker_events") for name, _ in scrape(registry))


def otel_points(data: MetricsData) -> Points:
    points: Points = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            if scope.scope.name != "px-tracker":
                continue  # the SDK's own self-metrics, in versions that have them
            assert scope.scope.version == tracker.__version__
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = point.value  # type: ignore[union-attr]
                    points.setdefault(metric.name, []).append((dict(point.attributes or {}), value))
    return points


class TestOpenTelemetry:
    def collect(self, reader: InMemoryMetricReader) -> Points:
        data = reader.get_metrics_data()
        assert data is not None
        return otel_points(data)

    def check(self, points: Points, stats: Stats) -> None:
        (tracked,) = points[px_otel.TRACKED]
        assert tracked[1] == stats.tracked
        processed = {
            (attrs.get(px_otel.OUTCOME), attrs.get(px_otel.ERROR_TYPE)): value
            for attrs, value in points[px_otel.PROCESSED]
        }
        assert processed[("delivered", None)] == stats.delivered
        for reason, count in stats.failed_by_reason.items():
            assert processed[("failed", reason)] == count
        for reason, count in stats.dropped_by_reason.items():
            assert processed[("dropped", reason)] == count
        (size,) = points[px_otel.QUEUE_SIZE]
        assert size[1] == stats.pending
        assert points[px_otel.QUEUE_CAPACITY][0][1] == CAPACITY
        assert points[px_otel.RETRIES][0][1] == stats.retries
        assert points[px_otel.RATE_LIMITED][0][1] == stats.rate_limited
        # The invariant, in the collection itself.
        assert tracked[1] == sum(processed.values()) + size[1]

    def test_a_collection_after_faults_equals_stats_and_keeps_the_invariant(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])

        def during_pause(t: Tracker) -> None:
            px_otel.instrument(t, provider)
            points = self.collect(reader)
            self.check(points, t.stats())
            assert points[px_otel.QUEUE_SIZE][0][1] == CAPACITY

        try:
            t, _ = faulted(fake_px, make_tracker, during_pause)
            points = self.collect(reader)
            self.check(points, t.stats())
            processed = {
                attrs.get(px_otel.ERROR_TYPE): value for attrs, value in points[px_otel.PROCESSED]
            }
            assert processed["retries_exhausted"] == 2
            assert processed["queue_overflow"] == 2
            assert points[px_otel.HEALTHY][0][1] == 1
            # No spool, no shared limiter here: those instruments stay empty.
            assert px_otel.SPOOLED not in points
            assert px_otel.LIMITER_FALLBACKS not in points
        finally:
            provider.shutdown()


@pytest.mark.parametrize(
    ("module", "package", "extra"),
    [
        ("tracker.integrations.prometheus", "prometheus_client", "prometheus"),
        ("tracker.integrations.opentelemetry", "opentelemetry", "opentelemetry"),
    ],
)
def test_a_missing_library_names_the_extra(module: str, package: str, extra: str) -> None:
    # A fresh interpreter where the library cannot be imported.
    code = (
        f"import sys; sys.modules[{package!r}] = None\n"
        "try:\n"
        f"    import {module}\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert f"pip install 'px-tracker[{extra}]'" in result.stdout
    assert module in result.stdout
