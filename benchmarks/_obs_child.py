"""One timed track() loop in a fresh process, importing tracker from a given source tree:
``python benchmarks/_obs_child.py TREE URL CALLS SCRAPE`` prints a JSON line."""

from __future__ import annotations

import gc
import json
import sys
import threading
import time


def main() -> None:
    tree, url, calls, scrape = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    sys.path.insert(0, tree)  # this tree, or the one before the change, never both
    import tracker as package  # noqa: PLC0415 (after the path is set)
    from tracker import Tracker  # noqa: PLC0415

    tracker = Tracker(
        "bench-key",
        product_key="AP-BENCH-1",
        base_url=url,
        max_queue_size=calls + 1100,
        flush_at_exit=False,
    )
    stop = threading.Event()
    scraper = None
    if scrape:
        from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415

        from tracker.integrations import prometheus  # noqa: PLC0415

        registry = CollectorRegistry()
        prometheus.register(tracker, registry)

        def scrape_often() -> None:
            # Far more often than any Prometheus scrapes (every 15-60 s): an upper bound.
            while not stop.wait(0.05):
                generate_latest(registry)

        scraper = threading.Thread(target=scrape_often, daemon=True)
        scraper.start()
    track = tracker.track
    for _ in range(100):  # warm-up
        track("user-42", "Report Exported", attributes={"format": "csv", "rows": 120})
    gc.collect()
    cpu = time.thread_time()
    started = time.perf_counter()
    for _ in range(calls):
        track("user-42", "Report Exported", attributes={"format": "csv", "rows": 120})
    wall = time.perf_counter() - started
    cpu = time.thread_time() - cpu
    stop.set()
    if scraper is not None:
        scraper.join()
    refused = tracker.stats().dropped
    tracker.shutdown(timeout=0)
    print(
        json.dumps(
            {
                "us_per_call": wall / calls * 1e6,
                "cpu_us_per_call": cpu / calls * 1e6,
                "refused": refused,
                "tracker_file": package.__file__,
            }
        )
    )


if __name__ == "__main__":
    main()
