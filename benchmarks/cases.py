"""The benchmark cases. Each takes the Settings and returns its result Rows; the variants
of a case (ours and its baselines) run interleaved in the same process run."""

from __future__ import annotations

import atexit
import gc
import importlib
import json
import logging
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from types import ModuleType
from typing import Any, Callable, Optional

import requests
from requests.adapters import HTTPAdapter

from benchmarks._common import (
    API_KEY,
    EVENT_NAME,
    HERE,
    IDENTIFY_ID,
    NOT_INSTALLED,
    PRODUCT_KEY,
    Goal,
    Row,
    ServerProcess,
    Settings,
    Variant,
    attributes,
    column,
    dead_url,
    interleave,
    log,
    our_tracker,
    retrying_tracker,
    track_many,
    wait_until,
)
from benchmarks.observability import observability
from tracker import Config, Tracker

WARMUP_CALLS = 100

# The peers log upload errors (the memory case points them at a dead port) and PostHog
# warns about its own options; none of that is benchmark output.
for _name in ("segment", "posthog", "backoff", "urllib3"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)


def _optional(module: str) -> Optional[ModuleType]:
    """A peer SDK, or None when it is not installed (its columns then say so)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def _segment() -> Optional[ModuleType]:
    return _optional("segment.analytics")


def _posthog() -> Optional[ModuleType]:
    return _optional("posthog")


def _peer_row(row: Row, available: bool) -> Row:
    if not available:
        row.baseline_status = NOT_INSTALLED
        row.baseline_samples = None
    return row


# -- hot_path ------------------------------------------------------------------------------------


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
    analytics, posthog = _segment(), _posthog()
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
        _peer_row(
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
        _peer_row(
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
        _peer_row(
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
        _peer_row(
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


# -- memory ----------------------------------------------------------------------------------------


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
    analytics = _segment()
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
        _peer_row(
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
        _peer_row(
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


# -- delivery ----------------------------------------------------------------------------------


def _bodies(n: int) -> list[dict[str, Any]]:
    """Event bodies in PX's wire form, as ours sends them."""
    now = int(time.time() * 1000)
    return [
        {
            "eventId": str(uuid.uuid4()),
            "identifyId": IDENTIFY_ID,
            "propertyKey": PRODUCT_KEY,
            "date": now,
            "userType": "USER",
            "eventName": EVENT_NAME,
            "attributes": attributes(),
        }
        for _ in range(n)
    ]


def _session(pool: int) -> requests.Session:
    session = requests.Session()
    session.headers.update({"X-APTRINSIC-API-KEY": API_KEY, "Content-Type": "application/json"})
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool, max_retries=0)
    session.mount("http://", adapter)
    session.trust_env = False
    return session


def _post_all(session: requests.Session, url: str, bodies: list[dict[str, Any]]) -> int:
    ok = 0
    for body in bodies:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        response = session.post(url, data=data, timeout=10)
        ok += 200 <= response.status_code < 300
    return ok


def _confirmed(px: ServerProcess, n: int, elapsed: float, cpu: float) -> dict[str, float]:
    server = px.stats()
    px.clear()
    events = server["unique_events"]  # a retried duplicate must not count twice
    return {
        "events_per_s": events / elapsed,
        "confirmed": float(events),
        "requests": float(server["requests"]),
        "cpu_ms_per_event": cpu / n * 1000,
    }


def _delivery_ours(px: ServerProcess, n: int) -> dict[str, float]:
    tracker = Tracker(
        API_KEY,
        product_key=PRODUCT_KEY,
        base_url=px.url,
        rate_limit=None,
        max_queue_size=max(n, 10_000),
        flush_at_exit=False,
    )
    cpu = time.process_time()
    started = time.perf_counter()
    track = tracker.track
    for _ in range(n):
        track(
            IDENTIFY_ID, EVENT_NAME, attributes={"format": "csv", "rows": 120, "scheduled": False}
        )
    flushed = tracker.flush(timeout=300)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    tracker.shutdown()
    if not flushed:
        log("  [delivery] ours: flush() timed out")
    return _confirmed(px, n, elapsed, cpu)


def _delivery_loop(px: ServerProcess, n: int, threads: int) -> dict[str, float]:
    bodies = _bodies(n)
    session = _session(threads)
    url = px.url + "/v1/events/custom"
    cpu = time.process_time()
    started = time.perf_counter()
    if threads == 1:
        _post_all(session, url, bodies)
    else:
        workers = [
            threading.Thread(target=_post_all, args=(session, url, bodies[i::threads]))
            for i in range(threads)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    session.close()
    return _confirmed(px, n, elapsed, cpu)


def delivery(settings: Settings) -> list[Row]:
    n = settings.delivery_events
    workers = Config.from_options({"api_key": API_KEY}).workers  # our default count
    with ServerProcess("fakepx") as px:
        results = interleave(
            "delivery",
            settings.reps,
            {
                "ours": lambda: _delivery_ours(px, n),
                "requests 1 thread": lambda: _delivery_loop(px, n, 1),
                f"requests {workers} threads": lambda: _delivery_loop(px, n, workers),
            },
        )
    ours = column(results["ours"], "events_per_s")
    single = results["requests 1 thread"]
    multi = results[f"requests {workers} threads"]
    extra = {
        "events_per_rep": n,
        "confirmed": {name: column(r, "confirmed") for name, r in results.items()},
    }
    return [
        Row(
            "delivery",
            "events delivered/s",
            "events/s",
            ours,
            baseline="requests.Session loop, 1 thread",
            baseline_samples=column(single, "events_per_s"),
            goal=Goal("ours >= 0.9x the 1-thread loop", "ratio", ">=", 0.9),
            digits=0,
            explain=(
                f"{n:,} events tracked then flush() (rate_limit=None, {workers} workers), "
                "counted as accepted by FakePX in its own process / elapsed"
            ),
            extra=extra,
        ),
        Row(
            "delivery",
            "events delivered/s",
            "events/s",
            ours,
            baseline=f"requests.Session loop, {workers} threads",
            baseline_samples=column(multi, "events_per_s"),
            digits=0,
            explain=f"the same bodies posted by {workers} threads sharing one Session",
            extra=extra,
        ),
        Row(
            "delivery",
            "client CPU per event",
            "ms",
            column(results["ours"], "cpu_ms_per_event"),
            baseline="requests.Session loop, 1 thread",
            baseline_samples=column(single, "cpu_ms_per_event"),
            digits=3,
            explain="CPU time of the whole client process (all threads) / events",
            extra=extra,
        ),
    ]


# -- pacing ---------------------------------------------------------------------------------------

SERVER_RATE = 200.0
SERVER_LATENCY = 0.05


def _pacing_ours(px: ServerProcess, n: int) -> dict[str, float]:
    time.sleep(1.1)  # let the server's token bucket refill after the previous repetition
    px.clear()
    tracker = Tracker(API_KEY, product_key=PRODUCT_KEY, base_url=px.url, flush_at_exit=False)
    started = time.perf_counter()
    track = tracker.track
    for _ in range(n):
        track(
            IDENTIFY_ID, EVENT_NAME, attributes={"format": "csv", "rows": 120, "scheduled": False}
        )
    tracker.flush(timeout=n / SERVER_RATE * 5 + 30)
    elapsed = time.perf_counter() - started
    stats = tracker.stats()
    tracker.shutdown()
    server = px.stats()
    px.clear()
    requests_seen = server["requests"]
    share_429 = server["statuses"].get("429", 0) / requests_seen * 100 if requests_seen else 0.0
    return {
        "events_per_s": server["unique_events"] / elapsed,
        "share_429_pct": share_429,
        "delivered": float(server["unique_events"]),
        "client_delivered": float(stats.delivered),
        "elapsed_s": elapsed,
    }


def pacing(settings: Settings) -> list[Row]:
    n = settings.pacing_events
    with ServerProcess("fakepx", rate_limit=SERVER_RATE, latency=SERVER_LATENCY) as px:
        results = interleave("pacing", settings.reps, {"ours": lambda: _pacing_ours(px, n)})
    ours = results["ours"]
    extra = {"events_per_rep": n, "elapsed_s": column(ours, "elapsed_s")}
    setup = (
        f"FakePX (own process) rate_limit={SERVER_RATE:g}/s, latency={SERVER_LATENCY * 1000:g} "
        f"ms; ours with default settings; {n:,} events"
    )
    return [
        Row(
            "pacing",
            "sustained delivery",
            "events/s",
            column(ours, "events_per_s"),
            baseline="server limit (constant)",
            baseline_value=SERVER_RATE,
            goal=Goal(">= 180 events/s", "value", ">=", 180),
            digits=0,
            explain=f"{setup}: unique events accepted / (first track() to flush() return)",
            extra=extra,
        ),
        Row(
            "pacing",
            "requests answered 429",
            "%",
            column(ours, "share_429_pct"),
            goal=Goal("< 1%", "value", "<", 1.0),
            explain="429 answers / all requests, as FakePX recorded them",
            extra=extra,
        ),
        _all_delivered_row(
            "pacing", column(ours, "delivered"), n, "unique event ids FakePX accepted", extra
        ),
    ]


def _all_delivered_row(
    case: str,
    delivered: list[float],
    n: int,
    explain: str,
    extra: Optional[dict[str, Any]] = None,
    *,
    metric: str = "events delivered (worst rep)",
) -> Row:
    """The row whose goal is that every repetition delivered all ``n`` events."""
    return Row(
        case,
        metric,
        "events",
        delivered,
        baseline="events tracked (constant)",
        baseline_value=float(n),
        goal=Goal("all delivered, every rep", "value", "==", float(n), stat="min"),
        digits=0,
        explain=explain,
        extra=extra or {},
    )


# -- exit -----------------------------------------------------------------------------------------


def _exit_child(base_url: str, n: int, exit_timeout: float, rate: str) -> dict[str, Any]:
    proc = subprocess.Popen(
        # As a module from the repository root: the same tracker as the runner imports.
        [sys.executable, "-m", "benchmarks._exit_child", base_url, str(n), str(exit_timeout), rate],
        stdout=subprocess.PIPE,
        text=True,
        cwd=HERE.parent,
    )
    out, _ = proc.communicate(timeout=exit_timeout + 120)
    exited = time.monotonic()
    if proc.returncode != 0:
        raise RuntimeError(f"exit child failed with code {proc.returncode}: {out!r}")
    report: dict[str, Any] = {}
    for line in out.splitlines():
        report.update(json.loads(line))
    report["exit_s"] = exited - report["tracked_at"]
    report["total_s"] = exited - report["started_at"]
    return report


def _exit_dead(n: int, exit_timeout: float) -> dict[str, float]:
    report = _exit_child(dead_url(), n, exit_timeout, "200")
    return {"exit_s": report["exit_s"], "dropped": float(report["dropped"])}


def _exit_healthy(px: ServerProcess, n: int) -> dict[str, float]:
    px.clear()
    report = _exit_child(px.url, n, 120.0, "off")
    server = px.stats()
    px.clear()
    return {
        "exit_s": report["exit_s"],
        "total_s": report["total_s"],
        "delivered": float(server["unique_events"]),
    }


def exit_case(settings: Settings) -> list[Row]:
    n, exit_timeout = settings.exit_events, settings.exit_timeout
    with ServerProcess("fakepx") as px:
        results = interleave(
            "exit",
            settings.reps,
            {
                "dead server": lambda: _exit_dead(n, exit_timeout),
                "healthy sink": lambda: _exit_healthy(px, n),
            },
        )
    dead, healthy = results["dead server"], results["healthy sink"]
    return [
        Row(
            "exit",
            "exit, server dead",
            "s",
            column(dead, "exit_s"),
            baseline="exit_timeout (constant)",
            baseline_value=exit_timeout,
            goal=Goal(
                f"<= exit_timeout + 0.5 s ({exit_timeout + 0.5:g} s)",
                "value",
                "<=",
                exit_timeout + 0.5,
            ),
            explain=(
                f"a subprocess with {n:,} pending events (closed port, exit_timeout="
                f"{exit_timeout:g}): from its last track() to the process being gone"
            ),
            extra={"events": n, "dropped": column(dead, "dropped")},
        ),
        Row(
            "exit",
            "exit, healthy sink: all delivered",
            "s",
            column(healthy, "exit_s"),
            explain=(
                "same with FakePX (own process), rate_limit=None, exit_timeout=120: last "
                "track() to process gone, every event delivered by the at-exit flush"
            ),
            extra={"events": n, "first_track_to_exit_s": column(healthy, "total_s")},
        ),
        _all_delivered_row(
            "exit",
            column(healthy, "delivered"),
            n,
            "unique event ids FakePX accepted from the exiting process",
            metric="delivered at exit (worst rep)",
        ),
    ]


# -- fakepx_capacity -------------------------------------------------------------------------


def _capacity(px: ServerProcess, n: int) -> dict[str, float]:
    bodies = _bodies(n)
    session = _session(1)
    url = px.url + "/v1/events/custom"
    started = time.perf_counter()
    ok = _post_all(session, url, bodies)
    elapsed = time.perf_counter() - started
    session.close()
    px.clear()
    if ok != n:
        log(f"  [fakepx_capacity] only {ok} of {n} requests answered 2xx")
    return {"requests_per_s": n / elapsed}


TARGET_CAPACITY = 300.0


def fakepx_capacity(settings: Settings) -> list[Row]:
    n = settings.capacity_requests
    with ServerProcess("fakepx") as px:
        results = interleave("fakepx_capacity", settings.reps, {"fakepx": lambda: _capacity(px, n)})
    return [
        Row(
            "fakepx_capacity",
            "FakePX, 1 keep-alive client",
            "req/s",
            column(results["fakepx"], "requests_per_s"),
            baseline="testing-kit target (constant)",
            baseline_value=TARGET_CAPACITY,
            goal=Goal("well over 300 req/s (>= 300)", "value", ">=", TARGET_CAPACITY),
            digits=0,
            explain=f"{n:,} valid event POSTs from one requests.Session, FakePX in its own process",
        )
    ]


CASES: dict[str, Callable[[Settings], list[Row]]] = {
    "hot_path": hot_path,
    "memory": memory,
    "delivery": delivery,
    "pacing": pacing,
    "exit": exit_case,
    "fakepx_capacity": fakepx_capacity,
    "observability": observability,
}
