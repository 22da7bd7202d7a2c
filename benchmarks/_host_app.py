"""The host_app case's WSGI app, run by gunicorn (one sync worker): ~1 ms of CPU and one
tracked event per request, with the tracking SDK chosen by an environment variable.

    PX_BENCH_TRACKING=none|ours|segment|posthog|bare  PX_BENCH_SINK=http://127.0.0.1:PORT \
        gunicorn -w 1 -k sync benchmarks._host_app:app

``bare`` is no SDK: one thread of the app POSTs an event to PX's path on the sink 200 times
a second with ``http.client`` on one keep-alive connection, encoding each event and reading
each answer, whatever the app does. About the least that sending one event per request at
PX's rate can cost a process: the floor for any SDK that must do it.

- ``/track``: spends ~1 ms of this thread's CPU, then tracks one event (nothing for
  ``none``) and answers 200.
- ``/stats``: tracks nothing; a JSON object with the worker's CPU time (all threads), its
  thread count and, for ours, ``tracker.stats()`` counts.
- ``/health``: tracks nothing, answers 200 (gunicorn is up).

Each SDK runs with its default options, sending to the loopback sink of
benchmarks/_server.py (ours to PX's path on it, the peers to their batch paths). Ours
skips its exit flush: teardown is not measured and must not wait for the queue.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any, Callable

# What each SDK's own logging would add is not the app's work.
for _name in ("tracker", "segment", "posthog", "backoff", "urllib3"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)

TRACKING = os.environ.get("PX_BENCH_TRACKING", "none")
SINK = os.environ.get("PX_BENCH_SINK", "")
CPU_PER_REQUEST = float(os.environ.get("PX_BENCH_CPU_S", "0.001"))
KEY = "bench-key"
EVENT = "Report Exported"
USER = "user-42"


def _attributes() -> dict[str, Any]:
    return {"format": "csv", "rows": 120, "scheduled": False}


def _no_tracking() -> None:
    pass


def _setup() -> tuple[Callable[[], None], Callable[[], dict[str, Any]]]:
    """The per-request tracking call for TRACKING, and what /stats adds for it."""
    if TRACKING == "none":
        return _no_tracking, dict
    if TRACKING == "ours":
        import tracker  # noqa: PLC0415 (only the variant that uses it imports it)

        options: dict[str, Any] = {}
        if os.environ.get("PX_BENCH_WORKERS"):  # experiments only: defaults are measured
            options["workers"] = int(os.environ["PX_BENCH_WORKERS"])
        tracker.configure(
            api_key=KEY, product_key="AP-BENCH-1", base_url=SINK, flush_at_exit=False, **options
        )
        track_event = tracker.track  # the module-level call, as an app makes it

        def track() -> None:
            track_event(USER, EVENT, attributes=_attributes())

        def stats() -> dict[str, Any]:
            s = tracker.stats()
            return {
                "tracked": s.tracked,
                "delivered": s.delivered,
                "pending": s.pending,
                "dropped": s.dropped,
                "rate_limited": s.rate_limited,
            }

        return track, stats
    if TRACKING == "segment":
        from segment.analytics import Client  # noqa: PLC0415

        segment = Client(write_key=KEY, host=SINK)

        def track() -> None:
            segment.track(USER, EVENT, _attributes())

        return track, dict
    if TRACKING == "posthog":
        from posthog import Posthog  # noqa: PLC0415

        posthog = Posthog(KEY, host=SINK)

        def track() -> None:
            posthog.capture(EVENT, distinct_id=USER, properties=_attributes())

        return track, dict
    if TRACKING == "bare":
        threading.Thread(target=_bare_sender, name="bare-sender", daemon=True).start()
        return _no_tracking, dict
    raise SystemExit(
        f"PX_BENCH_TRACKING must be none, ours, segment, posthog or bare, not {TRACKING!r}"
    )


BARE_RATE = 200.0  # requests/s: PX's limit, what ours sustains in this benchmark


def _bare_sender() -> None:
    """The ``bare`` variant's sender: http.client, one keep-alive connection, paced by
    sleeping until each request's time (none is made up after a late one)."""
    import http.client  # noqa: PLC0415
    from urllib.parse import urlsplit  # noqa: PLC0415

    url = urlsplit(SINK)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    headers = {"Content-Type": "application/json", "X-APTRINSIC-API-KEY": KEY}
    interval = 1.0 / BARE_RATE
    due = time.monotonic()
    while True:
        body = json.dumps(
            {"identifyId": USER, "eventName": EVENT, "attributes": _attributes()},
            separators=(",", ":"),
        ).encode()
        conn.request("POST", "/v1/events/custom", body=body, headers=headers)
        conn.getresponse().read()
        due = max(due + interval, time.monotonic() - interval)
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)


_track, _stats = _setup()


def _work(seconds: float) -> int:
    """Pure-Python work until this thread has used ``seconds`` of CPU: time spent waiting
    for the GIL while an SDK's threads hold it does not count, it shows as latency."""
    end = time.thread_time() + seconds
    spins = 0
    while time.thread_time() < end:
        spins += 1
    return spins


def _answer(start_response: Callable[..., Any], body: bytes) -> list[bytes]:
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/track":
        _work(CPU_PER_REQUEST)
        _track()
        return _answer(start_response, b'{"ok":true}')
    if path == "/stats":
        answer = {
            "tracking": TRACKING,
            "cpu_s": time.process_time(),
            "threads": threading.active_count(),
            **_stats(),
        }
        return _answer(start_response, json.dumps(answer).encode())
    if path == "/health":
        return _answer(start_response, b"{}")
    start_response("404 Not Found", [("Content-Length", "0")])
    return [b""]
