"""The hot_path case: what one track()/capture() call costs the caller, ours against Segment
and PostHog."""

from __future__ import annotations

import atexit
import gc
import time
from types import ModuleType
from typing import Any, Callable, Optional

from benchmarks._common import (
    API_KEY,
    EVENT_NAME,
    IDENTIFY_ID,
    PRODUCT_KEY,
    Goal,
    Row,
    ServerProcess,
    Settings,
    Variant,
    column,
    interleave,
)
from benchmarks.cases._shared import (
    WARMUP_CALLS,
    peer_row,
    posthog_sdk,
    segment_sdk,
)
from tracker import Tracker


def _timed(loop: Callable[[], int], calls: int) -> dict[str, float]:
    """Run ``loop`` (``calls`` calls, returning how many were refused): wall µs per call,
    this thread's CPU µs per call (which excludes time spent waiting for the GIL while
    background threads run) and the CPU the process's other threads used meanwhile."""
    gc.collect()
    process = time.process_time()
    cpu = time.thread_time()
    started = time.perf_counter()
    refused = loop()
    wall = time.perf_counter() - started
    cpu = time.thread_time() - cpu
    process = time.process_time() - process
    if refused:
        raise RuntimeError(f"{refused} of {calls} calls were refused: queue too small")
    return {
        "us_per_call": wall / calls * 1e6,
        "cpu_us_per_call": cpu / calls * 1e6,
        "background_cpu_ms": (process - cpu) * 1000,
    }


def _hot_ours(px: ServerProcess, calls: int) -> dict[str, float]:
    tracker = Tracker(
        API_KEY,
        product_key=PRODUCT_KEY,
        base_url=px.url,
        max_queue_size=calls + WARMUP_CALLS + 1000,
        flush_at_exit=False,
    )
    track = tracker.track

    def loop(n: int = calls) -> int:
        refused = 0
        for _ in range(n):
            if (
                track(
                    IDENTIFY_ID,
                    EVENT_NAME,
                    attributes={"format": "csv", "rows": 120, "scheduled": False},
                )
                is None
            ):
                refused += 1
        return refused

    loop(WARMUP_CALLS)
    sent = tracker.stats().delivered
    result = _timed(loop, calls)
    result["delivered_during_loop"] = float(tracker.stats().delivered - sent)
    tracker.shutdown(timeout=0)  # untimed; what is left is dropped, not waited for
    px.clear()
    return result


def _hot_segment(analytics: ModuleType, sink: ServerProcess, calls: int) -> dict[str, float]:
    client = analytics.Client(
        write_key=API_KEY, host=sink.url, max_queue_size=calls + WARMUP_CALLS + 1000
    )
    track = client.track

    def loop(n: int = calls) -> int:
        refused = 0
        for _ in range(n):
            if not track(
                IDENTIFY_ID, EVENT_NAME, {"format": "csv", "rows": 120, "scheduled": False}
            )[0]:
                refused += 1
        return refused

    loop(WARMUP_CALLS)
    result = _timed(loop, calls)
    client.shutdown()  # flush + stop the consumer, untimed
    atexit.unregister(client.join)
    sink.clear()
    return result


def _hot_posthog(posthog: ModuleType, sink: ServerProcess, calls: int) -> dict[str, float]:
    client = posthog.Posthog(API_KEY, host=sink.url, max_queue_size=calls + WARMUP_CALLS + 1000)
    capture = client.capture

    def loop(n: int = calls) -> int:
        refused = 0
        for _ in range(n):
            if (
                capture(
                    EVENT_NAME,
                    distinct_id=IDENTIFY_ID,
                    properties={"format": "csv", "rows": 120, "scheduled": False},
                )
                is None
            ):
                refused += 1
        return refused

    loop(WARMUP_CALLS)
    result = _timed(loop, calls)
    client.flush()
    client.shutdown()
    sink.clear()
    return result


def hot_path(settings: Settings) -> list[Row]:
    calls = settings.hot_calls
    analytics, posthog = segment_sdk(), posthog_sdk()
    with ServerProcess("fakepx") as px, ServerProcess("sink") as sink:
        variants: dict[str, Variant] = {"ours": lambda: _hot_ours(px, calls)}
        if analytics is not None:
            variants["segment"] = lambda: _hot_segment(analytics, sink, calls)
        if posthog is not None:
            variants["posthog"] = lambda: _hot_posthog(posthog, sink, calls)
        results = interleave("hot_path", settings.hot_reps, variants)

    def peer(name: str, key: str) -> Optional[list[float]]:
        return column(results[name], key) if name in results else None

    ours_wall = column(results["ours"], "us_per_call")
    ours_cpu = column(results["ours"], "cpu_us_per_call")
    extra: dict[str, Any] = {"calls_per_rep": calls, "warmup_calls": WARMUP_CALLS}
    for name, runs in results.items():
        extra[f"{name}_background_cpu_ms"] = column(runs, "background_cpu_ms")
    extra["ours_delivered_during_loop"] = column(results["ours"], "delivered_during_loop")
    return [
        peer_row(
            Row(
                "hot_path",
                "track() wall time",
                "µs/call",
                ours_wall,
                baseline="Segment track()",
                baseline_samples=peer("segment", "us_per_call"),
                goal=Goal("ours <= 0.2x Segment", "ratio", "<=", 0.2),
                explain=(
                    f"wall time of {calls:,} back-to-back calls / {calls:,}, background "
                    "senders running (ours against FakePX, the peers against a loopback sink)"
                ),
                extra=extra,
            ),
            analytics is not None,
        ),
        peer_row(
            Row(
                "hot_path",
                "track() wall time",
                "µs/call",
                ours_wall,
                baseline="PostHog capture()",
                baseline_samples=peer("posthog", "us_per_call"),
                explain="same, against PostHog's capture()",
                extra=extra,
            ),
            posthog is not None,
        ),
        peer_row(
            Row(
                "hot_path",
                "caller-thread CPU",
                "µs/call",
                ours_cpu,
                baseline="Segment track()",
                baseline_samples=peer("segment", "cpu_us_per_call"),
                explain=(
                    "CPU time of the calling thread only (time.thread_time): the call's own "
                    "work, without the time lost to the background senders holding the GIL"
                ),
                extra=extra,
            ),
            analytics is not None,
        ),
        peer_row(
            Row(
                "hot_path",
                "caller-thread CPU",
                "µs/call",
                ours_cpu,
                baseline="PostHog capture()",
                baseline_samples=peer("posthog", "cpu_us_per_call"),
                explain="same, against PostHog's capture()",
                extra=extra,
            ),
            posthog is not None,
        ),
    ]
