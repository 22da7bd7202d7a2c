"""The process whose exit the ``exit`` case times.

    python -m benchmarks._exit_child BASE_URL N EXIT_TIMEOUT RATE_LIMIT

Tracks N events with a default-configured Tracker (but ``exit_timeout`` and
``rate_limit``, ``off`` for none), prints ``{"tracked_at": monotonic}`` and simply
returns, leaving the events to the at-exit flush. A hook registered *before* tracker
is imported runs *after* tracker's own at-exit flush (atexit is last-in, first-out) and
prints the final counters with ``{"flushed_at": monotonic}``. ``time.monotonic()`` is
system-wide on Linux, so the parent compares these stamps with its own.
"""

from __future__ import annotations

import atexit
import json
import sys
import time
from typing import Any

_state: dict[str, Any] = {}


def _report() -> None:
    tracker = _state.get("tracker")
    out: dict[str, Any] = {"flushed_at": time.monotonic()}
    if tracker is not None:
        stats = tracker.stats()
        out.update(
            delivered=stats.delivered,
            dropped=stats.dropped,
            failed=stats.failed,
            pending=stats.pending,
            dropped_by_reason=dict(stats.dropped_by_reason),
        )
    print(json.dumps(out), flush=True)


atexit.register(_report)  # before tracker registers its own: runs after it

from tracker import Tracker  # noqa: E402


def main() -> None:
    base_url, n_text, exit_timeout_text, rate_text = sys.argv[1:5]
    n = int(n_text)
    rate_limit = None if rate_text == "off" else float(rate_text)
    tracker = Tracker(
        "bench-key",
        product_key="AP-BENCH-1",
        base_url=base_url,
        exit_timeout=float(exit_timeout_text),
        rate_limit=rate_limit,
        max_queue_size=max(n, 10_000),
    )
    _state["tracker"] = tracker
    started = time.monotonic()
    for _ in range(n):
        tracker.track(
            "user-42",
            "Report Exported",
            attributes={"format": "csv", "rows": 120, "scheduled": False},
        )
    print(json.dumps({"started_at": started, "tracked_at": time.monotonic()}), flush=True)


if __name__ == "__main__":
    main()
