"""The delivery case: unpaced events/s and client CPU, ours against plain requests loops."""

from __future__ import annotations

import threading
import time

from benchmarks._common import (
    API_KEY,
    EVENT_NAME,
    IDENTIFY_ID,
    PRODUCT_KEY,
    Goal,
    Row,
    ServerProcess,
    Settings,
    column,
    interleave,
    log,
)
from benchmarks.cases._shared import (
    confirmed,
    plain_session,
    post_all,
    wire_bodies,
)
from tracker import Config, Tracker


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
    return confirmed(px, n, elapsed, cpu)


def _delivery_loop(px: ServerProcess, n: int, threads: int) -> dict[str, float]:
    bodies = wire_bodies(n)
    session = plain_session(threads)
    url = px.url + "/v1/events/custom"
    cpu = time.process_time()
    started = time.perf_counter()
    if threads == 1:
        post_all(session, url, bodies)
    else:
        workers = [
            threading.Thread(target=post_all, args=(session, url, bodies[i::threads]))
            for i in range(threads)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    session.close()
    return confirmed(px, n, elapsed, cpu)


def delivery(settings: Settings) -> list[Row]:
    n = settings.delivery_events
    # Ours' thread cap as this case runs it: the default for rate_limit=None (16; with
    # pacing on, the default cap is 64).
    workers = Config.from_options({"api_key": API_KEY, "rate_limit": None}).workers
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
                f"{n:,} events tracked then flush() (rate_limit=None, up to {workers} workers), "
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
