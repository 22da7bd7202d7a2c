"""The memory case: bytes retained per queued event, ours against Segment."""

from __future__ import annotations

import atexit
import gc
import time
import tracemalloc
from types import ModuleType
from typing import Any, Callable

from benchmarks._common import (
    API_KEY,
    EVENT_NAME,
    IDENTIFY_ID,
    Goal,
    Row,
    Settings,
    Variant,
    column,
    dead_url,
    interleave,
    our_tracker,
    retrying_tracker,
    track_many,
    wait_until,
)
from benchmarks.cases._shared import (
    peer_row,
    segment_sdk,
)


def _retained(enqueue: Callable[[int], None], n: int) -> float:
    """Bytes per event that tracemalloc sees retained after ``enqueue(n)`` (after a full
    collection), relative to just before it."""
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    enqueue(n)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    return (after - before) / n


def _memory_ours(n: int) -> dict[str, float]:
    tracemalloc.start()
    try:
        tracker = our_tracker(dead_url(), max_queue_size=n + 1000)
        per_event = _retained(lambda count: track_many(tracker, count), n)
        stats = tracker.stats()
        if stats.pending != n:
            raise RuntimeError(f"ours: {n - stats.pending} events left the queue")
    finally:
        tracemalloc.stop()
    tracker.shutdown(timeout=0)
    return {"bytes_per_event": per_event, "in_retry_state": float(stats.retries)}


def _memory_ours_retrying(n: int) -> dict[str, float]:
    """Bytes per event once every event has been attempted once and waits for its retry
    (PX down for a while). Pacing off and a long backoff only get there quickly and keep
    the events still; they do not change what a waiting retry keeps."""
    tracemalloc.start()
    try:
        tracker = retrying_tracker(n)

        def enqueue(count: int) -> None:
            track_many(tracker, count)
            if not wait_until(lambda: tracker.stats().retries >= count, timeout=120):
                raise RuntimeError("ours: events did not all reach the retry state")
            time.sleep(0.2)  # let the last attempts settle into the retry heap

        per_event = _retained(enqueue, n)
        stats = tracker.stats()
        if stats.pending != n:
            raise RuntimeError(f"ours: {n - stats.pending} events left the queue")
    finally:
        tracemalloc.stop()
    tracker.shutdown(timeout=0)
    return {"bytes_per_event": per_event}


def _memory_segment(analytics: ModuleType, n: int) -> dict[str, float]:
    tracemalloc.start()
    try:
        client = analytics.Client(write_key=API_KEY, host=dead_url(), max_queue_size=n + 1000)

        def enqueue(count: int) -> None:
            track = client.track
            for _ in range(count):
                track(IDENTIFY_ID, EVENT_NAME, {"format": "csv", "rows": 120, "scheduled": False})

        per_event = _retained(enqueue, n)
        queued = client.queue.qsize()
    finally:
        tracemalloc.stop()
    # Stop the consumer (it hands its batch back to the queue) and empty the queue:
    # nothing may be sent, and nothing kept for the process's lifetime.
    client.join()
    atexit.unregister(client.join)
    with client.queue.mutex:
        client.queue.queue.clear()
    return {"bytes_per_event": per_event, "in_consumer_batch": float(n - queued)}


def memory(settings: Settings) -> list[Row]:
    n = settings.memory_events
    analytics = segment_sdk()
    n_retrying = 500 if settings.quick else min(n, 3000)
    variants: dict[str, Variant] = {
        "ours": lambda: _memory_ours(n),
        "ours, all in retry": lambda: _memory_ours_retrying(n_retrying),
    }
    if analytics is not None:
        variants["segment"] = lambda: _memory_segment(analytics, n)
    results = interleave("memory", settings.hot_reps, variants)
    segment = column(results["segment"], "bytes_per_event") if "segment" in results else None
    extra: dict[str, Any] = {
        "events_per_rep": n,
        "ours_in_retry_state": column(results["ours"], "in_retry_state"),
    }
    if "segment" in results:
        extra["segment_in_consumer_batch"] = column(results["segment"], "in_consumer_batch")
    return [
        peer_row(
            Row(
                "memory",
                "retained per queued event",
                "bytes",
                column(results["ours"], "bytes_per_event"),
                baseline="Segment",
                baseline_samples=segment,
                goal=Goal("ours <= 0.5x Segment", "ratio", "<=", 0.5),
                digits=0,
                explain=(
                    f"tracemalloc growth after {n:,} track() calls with the server unreachable "
                    "(a closed loopback port), default options and threads running, / events"
                ),
                extra=extra,
            ),
            analytics is not None,
        ),
        peer_row(
            Row(
                "memory",
                "retained per event waiting to retry",
                "bytes",
                column(results["ours, all in retry"], "bytes_per_event"),
                baseline="Segment (same samples)",
                baseline_samples=segment,
                digits=0,
                explain=(
                    f"ours after all of {n_retrying:,} events were attempted once and wait "
                    "for their retry (rate_limit=None, backoff_base=30 to get there fast); "
                    "Segment keeps no per-event retry state (it retries a batch of 100), so "
                    "its figure is the one above"
                ),
                extra={"events_per_rep": n_retrying},
            ),
            analytics is not None,
        ),
    ]
