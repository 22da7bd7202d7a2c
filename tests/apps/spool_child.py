"""Child processes for tests/test_spool_processes.py (killed, stopped, limited, measured).

    python spool_child.py track DIR URL PREFIX N INTERVAL PACE
        track N events (identifyId PREFIX-i) with spool=DIR, printing one line
        "T <eventId> <monotonic time>" after each track() returned and one line
        "D <eventId>" from on_success (after PX's 2xx settled it); then "done", then wait
        for a line on stdin ("flush": flush and print the stats; EOF: exit at once).
        Its requests' User-Agent ends in "spool-child/<pid>": who sent what.
    python spool_child.py fsize DIR URL N LIMIT QUEUE
        the same under RLIMIT_FSIZE=LIMIT bytes with max_queue_size=QUEUE; waits for
        "flush" on stdin, prints stats
    python spool_child.py fork DIR URL
        track 5 events (p-i), fork; the child tracks 3 (c-i), flushes, prints its stats and
        leaves; the parent prints its stats, then waits for "flush" on stdin
    python spool_child.py rss DIR URL N SPOOL QUEUE
        track N events of ~2.5 KB while PX fails; print the growth of the resident set

Stats lines are JSON objects with "kind": "stats".
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import threading
import time
from typing import Any

from tracker import CustomEvent, Tracker, _transport

API_KEY = "k-spool-child"
PRODUCT_KEY = "AP-SPOOL-1"


def stats_line(t: Any) -> str:
    s = t.stats()
    return json.dumps(
        {
            "kind": "stats",
            "tracked": s.tracked,
            "recovered": s.recovered,
            "delivered": s.delivered,
            "failed": s.failed,
            "dropped": s.dropped,
            "pending": s.pending,
            "spooled": s.spooled,
            "dropped_by_reason": {k: v for k, v in s.dropped_by_reason.items() if v},
        }
    )


class Lines:
    """Whole lines to stdout from any thread, in the order they were written."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def delivered(self, event: CustomEvent) -> None:
        self.write(f"D {event.event_id}")


def tag_requests() -> None:
    """Every tracker built from now on sends with "spool-child/<pid>" in its User-Agent
    (FakePX records the headers): the test tells which process sent each request."""

    def factory(config: Any, user_agent: str, pool_size: int) -> _transport.Transport:
        return _transport.RequestsTransport(
            config, f"{user_agent} spool-child/{os.getpid()}", pool_size
        )

    _transport.set_factory(factory)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    mode = argv[0]
    if mode == "fsize":
        limit = int(argv[4])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    directory, url = argv[1], argv[2]
    out = sys.stdout
    if mode == "rss":
        count, spool, queue = int(argv[3]), argv[4] == "1", int(argv[5])
        t = Tracker(
            API_KEY,
            product_key=PRODUCT_KEY,
            base_url=url,
            spool=directory if spool else None,
            max_queue_size=queue,
            flush_at_exit=False,
            backoff_base=0.05,
            backoff_max=0.2,
            workers=4,
        )
        pad = "x" * 2500
        t.track("warm", "e", attributes={"pad": pad})
        before = rss_bytes()
        for i in range(count):
            t.track(f"r-{i}", "e", attributes={"pad": f"{i:08d}{pad}", "i": i})
        time.sleep(0.5)  # the writer commits what it holds
        after = rss_bytes()
        out.write(json.dumps({"kind": "rss", "growth": after - before}) + "\n")
        out.write(stats_line(t) + "\n")
        out.flush()
        t.shutdown(timeout=0)
        return 0
    if mode == "fork":
        t = Tracker(
            API_KEY,
            product_key=PRODUCT_KEY,
            base_url=url,
            spool=directory,
            spool_interval=0,
            flush_at_exit=False,
            backoff_base=0.01,
            backoff_max=0.05,
        )
        for i in range(5):
            t.track(f"p-{i}", "e")
        pid = os.fork()
        if pid == 0:
            for i in range(3):
                t.track(f"c-{i}", "e")
            t.flush(timeout=30)
            out.write(stats_line(t) + "\n")
            out.flush()
            t.shutdown()
            os._exit(0)
        os.waitpid(pid, 0)
        out.write(stats_line(t) + "\n")
        out.flush()
        if sys.stdin.readline().strip() == "flush":
            t.flush(timeout=30)
            out.write(stats_line(t) + "\n")
            out.flush()
        t.shutdown()
        return 0
    if mode == "track":
        prefix, count, interval, pace = argv[3], int(argv[4]), float(argv[5]), float(argv[6])
    else:  # fsize
        prefix, count, interval, pace = "f", int(argv[3]), 0.05, 0.0
    queue = int(argv[5]) if mode == "fsize" else 10_000
    lines = Lines()
    tag_requests()
    t = Tracker(
        API_KEY,
        max_queue_size=queue,
        product_key=PRODUCT_KEY,
        base_url=url,
        spool=directory,
        spool_interval=interval,
        flush_at_exit=False,
        rate_limit=None,
        workers=4,
        backoff_base=0.01,
        backoff_max=0.05,
        on_success=lines.delivered,
    )
    lines.write(stats_line(t))
    for i in range(count):
        event_id = t.track(f"{prefix}-{i}", "e")
        lines.write(f"T {event_id} {time.monotonic()!r}")
        if pace:
            time.sleep(pace)
    lines.write("done")
    if sys.stdin.readline().strip() == "flush":
        t.flush(timeout=60)
        lines.write(stats_line(t))
    t.shutdown(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
