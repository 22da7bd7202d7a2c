"""The cpu_per_event case: client CPU per delivered event, ours against a bare
``http.client`` keep-alive loop and a plain ``requests.Session`` loop, unpaced and at 200/s."""

from __future__ import annotations

import http.client
import json
import resource
import time
from typing import Any, Callable

from benchmarks._common import (
    API_KEY,
    EVENT_NAME,
    IDENTIFY_ID,
    Row,
    ServerProcess,
    Settings,
    column,
    interleave,
    log,
    our_tracker,
)
from benchmarks.cases._shared import plain_session, slug, wire_bodies

RATE = 200.0
PATH = "/v1/events/custom"
HEADERS = {"X-APTRINSIC-API-KEY": API_KEY, "Content-Type": "application/json"}

Send = Callable[[bytes], bool]


def _switches() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_nvcsw + usage.ru_nivcsw


def _measured(px: ServerProcess, paced: bool, run: Callable[[], None]) -> dict[str, float]:
    """CPU (all threads), context switches and wall time of ``run``, per event FakePX
    accepted (unique ids: a retried duplicate is not a second delivery)."""
    if paced:
        time.sleep(1.1)  # the server's bucket refills after the previous repetition
    px.clear()
    switches, cpu, started = _switches(), time.process_time(), time.perf_counter()
    run()
    elapsed = time.perf_counter() - started
    cpu, switches = time.process_time() - cpu, _switches() - switches
    server = px.stats()
    px.clear()
    delivered = server["unique_events"]
    if not delivered:
        raise RuntimeError("no event was delivered")
    return {
        "cpu_ms_per_event": cpu / delivered * 1000,
        "switches_per_event": switches / delivered,
        "events_per_s": delivered / elapsed,
        "delivered": float(delivered),
        "answered_429": float(server["statuses"].get("429", 0)),
    }


def _ours(px: ServerProcess, n: int, paced: bool) -> dict[str, float]:
    # Unpaced: rate_limit=None (the delivery case's setting); paced: the defaults (200/s).
    options: dict[str, Any] = {"max_queue_size": max(n, 10_000)}
    if not paced:
        options["rate_limit"] = None
    tracker = our_tracker(px.url, **options)

    def run() -> None:
        track = tracker.track
        for _ in range(n):
            track(
                IDENTIFY_ID,
                EVENT_NAME,
                attributes={"format": "csv", "rows": 120, "scheduled": False},
            )
        if not tracker.flush(timeout=n / RATE * 5 + 60):
            log("  [cpu_per_event] ours: flush() timed out")

    try:
        return _measured(px, paced, run)
    finally:
        tracker.shutdown(timeout=0)


def _loop(send: Send, bodies: list[dict[str, Any]], paced: bool) -> None:
    """POST every body, one after the other; paced: the i-th not before start + i/RATE."""
    dumps = json.dumps
    start = time.perf_counter()
    for i, body in enumerate(bodies):
        if paced:
            wait = start + i / RATE - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        send(dumps(body, ensure_ascii=False, separators=(",", ":")).encode())


def _http_client(px: ServerProcess, n: int, paced: bool) -> dict[str, float]:
    bodies = wire_bodies(n)
    conn = http.client.HTTPConnection("127.0.0.1", px.port, timeout=10)

    def send(data: bytes) -> bool:
        conn.request("POST", PATH, body=data, headers=HEADERS)
        response = conn.getresponse()
        response.read()
        return 200 <= response.status < 300

    try:
        return _measured(px, paced, lambda: _loop(send, bodies, paced))
    finally:
        conn.close()


def _requests(px: ServerProcess, n: int, paced: bool) -> dict[str, float]:
    bodies = wire_bodies(n)
    session = plain_session(1)
    url = px.url + PATH

    def send(data: bytes) -> bool:
        return 200 <= session.post(url, data=data, timeout=10).status_code < 300

    try:
        return _measured(px, paced, lambda: _loop(send, bodies, paced))
    finally:
        session.close()


BASELINES = {
    "http.client": ("http.client keep-alive loop", _http_client),
    "requests": ("requests.Session loop", _requests),
}


def cpu_per_event(settings: Settings) -> list[Row]:
    n, n_paced = settings.cpu_events, settings.cpu_paced_events
    with ServerProcess("fakepx") as free, ServerProcess("fakepx", rate_limit=RATE) as limited:
        variants = {
            "ours unpaced": lambda: _ours(free, n, paced=False),
            "ours 200/s": lambda: _ours(limited, n_paced, paced=True),
        }
        for key, (_, measure) in BASELINES.items():
            variants[f"{key} unpaced"] = lambda measure=measure: measure(free, n, False)
            variants[f"{key} 200/s"] = lambda measure=measure: measure(limited, n_paced, True)
        results = interleave("cpu_per_event", settings.reps, variants)
    extra: dict[str, Any] = {
        "events_unpaced": n,
        "events_paced": n_paced,
        **{
            f"{slug(variant)}_{key}": column(runs, key)
            for variant, runs in results.items()
            for key in runs[0]
        },
    }
    rows = []
    for mode, label, count in (("unpaced", "unpaced", n), ("200/s", "at 200/s", n_paced)):
        ours = results[f"ours {mode}"]
        setup = f"{count:,} events; " + (
            "FakePX (own process) without a limit, ours with rate_limit=None, the loops "
            "back to back"
            if mode == "unpaced"
            else "FakePX (own process) with its 200/s token bucket, ours with default "
            "settings, the loops sending the i-th request at start + i/200 s"
        )
        for key, (name, _) in BASELINES.items():
            base = results[f"{key} {mode}"]
            first = key == "http.client"
            rows.append(
                Row(
                    "cpu_per_event",
                    f"client CPU per event, {label}",
                    "ms",
                    column(ours, "cpu_ms_per_event"),
                    baseline=name,
                    baseline_samples=column(base, "cpu_ms_per_event"),
                    digits=3,
                    explain=(
                        f"{setup}: CPU time of the client process (all threads) from the first "
                        "track() (the loops: first request) to flush() returning (last answer), "
                        "/ unique events FakePX accepted"
                        if first
                        else "the same, against one requests.Session (json.dumps timed in "
                        "both loops, the bodies built beforehand)"
                    ),
                    extra=extra,
                )
            )
        rows.append(
            Row(
                "cpu_per_event",
                f"context switches per event, {label}",
                "",
                column(ours, "switches_per_event"),
                baseline="requests.Session loop",
                baseline_samples=column(results[f"requests {mode}"], "switches_per_event"),
                digits=2,
                explain="voluntary + involuntary context switches of the client process "
                "(getrusage) / events delivered",
                extra=extra,
            )
        )
    return rows
