"""The fakepx_capacity case: requests/s FakePX answers for one keep-alive client."""

from __future__ import annotations

import time

from benchmarks._common import (
    Goal,
    Row,
    ServerProcess,
    Settings,
    column,
    interleave,
    log,
)
from benchmarks.cases._shared import (
    plain_session,
    post_all,
    wire_bodies,
)


def _capacity(px: ServerProcess, n: int) -> dict[str, float]:
    bodies = wire_bodies(n)
    session = plain_session(1)
    url = px.url + "/v1/events/custom"
    started = time.perf_counter()
    ok = post_all(session, url, bodies)
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
