"""The pacing case: sustained delivery under FakePX's 200/s limit with default settings."""

from __future__ import annotations

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
)
from benchmarks.cases._shared import (
    all_delivered_row,
)
from tracker import Tracker

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
        all_delivered_row(
            "pacing", column(ours, "delivered"), n, "unique event ids FakePX accepted", extra
        ),
    ]
