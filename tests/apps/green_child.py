"""A monkey-patched process for tests/test_green.py (gevent or eventlet).

    python green_child.py LIB ORDER run SLOW_URL HUNG_URL N
    python green_child.py LIB ORDER tls URL CA_FILE N

LIB is ``gevent`` (``monkey.patch_all()``) or ``eventlet`` (``eventlet.monkey_patch()``).
ORDER ``before`` patches first thing, as both libraries ask; ``after`` imports the tracker
(and with it requests, urllib3 and ssl) first and patches then; ``preload`` also builds
the trackers and sends an event unpatched, then forks, and the child patches and runs on,
as ``gunicorn -k gevent --preload`` does (the master loads the app, each worker patches
after the fork).

A ticking greenlet sleeps 10 ms at a time and records the longest gap between two ticks
in each phase, less the time the OS did not run the process: a gap far past 10 ms means
something blocked the hub.

``run``: N events to a slow PX, ``flush()``; 4 more into a queue of 2 with overflow
"block"; then N to a PX that hangs: ``flush(0.5)``,
``shutdown(0.5)``, and N more left to the exit flush (``exit_timeout=0.5``, ``timeout=30``).
``tls``: N events over HTTPS to a server of a private CA, ``flush()``.

Every line on stdout is one JSON object with a "kind". The last, "after_exit", is written
by an atexit hook registered before ``tracker`` is imported: atexit runs hooks last in,
first out, so it runs after the tracker's exit flush and reports how long that took.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from typing import Any, Callable

LIB, ORDER = sys.argv[1], sys.argv[2]
DEADLINE = 0.5  # seconds: flush(), shutdown() and exit_timeout against the PX that hangs


def patch() -> None:
    if LIB == "gevent":
        from gevent import monkey  # noqa: PLC0415  (only the library asked for)

        monkey.patch_all()
    else:
        import eventlet  # noqa: PLC0415

        eventlet.monkey_patch()


if ORDER == "before":
    patch()


def emit(kind: str, **fields: Any) -> None:
    fields.update(kind=kind, pid=os.getpid())
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


_state: dict[str, Any] = {"exit_tracker": None, "main_ended": None}


def waited_for_cpu() -> float:
    """Seconds this OS thread has waited for a CPU so far (Linux's schedstat; 0 where
    there is none): on a loaded machine the scheduler, not the hub, makes those gaps."""
    try:
        with open("/proc/thread-self/schedstat") as stat:
            return int(stat.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


class Ticker:
    """A greenlet that ticks every 10 ms; ``phase()`` starts a new measurement. A gap is
    the time between two ticks less the time the process waited for a CPU meanwhile."""

    def __init__(self) -> None:
        self.longest = self.longest_wall = 0.0
        self.ticks = 0
        self._last = time.monotonic()
        self._waited = waited_for_cpu()

    def _gap(self, now: float, waited: float) -> float:
        return (now - self._last) - (waited - self._waited)

    def phase(self) -> dict[str, Any]:
        """The longest gaps and the number of ticks since the last call."""
        now = time.monotonic()
        report = {
            "longest_gap": max(self.longest, self._gap(now, waited_for_cpu())),
            "longest_wall_gap": max(self.longest_wall, now - self._last),
            "ticks": self.ticks,
        }
        self.longest = self.longest_wall = 0.0
        self.ticks = 0
        return report

    def run(self) -> None:
        self._last, self._waited = time.monotonic(), waited_for_cpu()
        while True:
            time.sleep(0.01)  # patched: yields to the hub
            now, waited = time.monotonic(), waited_for_cpu()
            self.longest = max(self.longest, self._gap(now, waited))
            self.longest_wall = max(self.longest_wall, now - self._last)
            self.ticks += 1
            self._last, self._waited = now, waited


ticker = Ticker()


def _after_exit() -> None:
    t = _state["exit_tracker"]
    if t is None:
        return
    s = t.stats()
    emit(
        "after_exit",
        exit_flush_seconds=time.monotonic() - _state["main_ended"],
        pending=s.pending,
        dropped=nonzero(s.dropped_by_reason),
        **ticker.phase(),
    )


atexit.register(_after_exit)

import tracker  # noqa: E402  (after the patch, or before it: that is the point)

if ORDER == "after":
    patch()


def spawn(function: Callable[[], None]) -> None:
    if LIB == "gevent":
        import gevent  # noqa: PLC0415

        gevent.spawn(function)
    else:
        import eventlet  # noqa: PLC0415

        eventlet.spawn(function)


def nonzero(counts: Any) -> dict[str, int]:
    return {reason: n for reason, n in counts.items() if n}


def make(url: str, **options: Any) -> tracker.Tracker:
    return tracker.Tracker("k-green", product_key="AP-GREEN-1", base_url=url, **options)


def timed(call: Callable[[], Any]) -> dict[str, Any]:
    """Run ``call`` with the ticker measuring; its result, seconds and the longest gap."""
    ticker.phase()
    started = time.monotonic()
    result = call()
    return {"result": result, "seconds": time.monotonic() - started, **ticker.phase()}


def build(slow_url: str, hung_url: str) -> dict[str, tracker.Tracker]:
    """Every tracker ``run`` uses, built before it runs anything."""
    return {
        "slow": make(slow_url, workers=4),
        "full": make(slow_url, workers=1, max_queue_size=2, overflow="block", block_timeout=10),
        "hung": make(hung_url, workers=2, timeout=30, flush_at_exit=False),
        "left": make(hung_url, workers=2, timeout=30, exit_timeout=DEADLINE),
    }


def preload(trackers: dict[str, tracker.Tracker]) -> None:
    """What ``gunicorn -k gevent --preload`` does: this (unpatched) process has built the
    trackers; it tracks and sends one event, forks, and waits for the child, which patches
    and goes on with the same trackers."""
    slow = trackers["slow"]
    emit("parent", id=slow.track("master", "app_boot"), flushed=slow.flush(30))
    pid = os.fork()
    if pid:
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
    patch()


def run(slow_url: str, hung_url: str, n: int) -> None:
    trackers = build(slow_url, hung_url)
    if ORDER == "preload":
        preload(trackers)
    spawn(ticker.run)
    time.sleep(0.05)  # the ticker runs

    slow = trackers["slow"]
    ids = [slow.track(f"user-{i}", "green_event", attributes={"i": i}) for i in range(n)]
    flushed = timed(lambda: slow.flush(30))
    s = slow.stats()
    emit("slow", ids=ids, flush=flushed, delivered=s.delivered, pending=s.pending)
    slow.shutdown()

    # A full queue with overflow="block": track() waits for room, cooperatively.
    full = trackers["full"]
    blocked = timed(lambda: [full.track("user", "blocked", attributes={"i": i}) for i in range(4)])
    emit("block", track=blocked, flushed=full.flush(30))
    full.shutdown()

    hung = trackers["hung"]
    for i in range(n):
        hung.track(f"user-{i}", "stuck")
    flush = timed(lambda: hung.flush(DEADLINE))
    shutdown = timed(lambda: hung.shutdown(DEADLINE))
    s = hung.stats()
    emit(
        "hung",
        flush=flush,
        shutdown=shutdown,
        pending=s.pending,
        dropped=nonzero(s.dropped_by_reason),
    )

    _state["exit_tracker"] = left = trackers["left"]
    for i in range(n):
        left.track(f"user-{i}", "left_for_exit")
    emit("main_end", pending=left.stats().pending)
    ticker.phase()
    _state["main_ended"] = time.monotonic()


def tls(url: str, ca_file: str, n: int) -> None:
    spawn(ticker.run)
    time.sleep(0.05)  # the ticker runs
    t = make(url, ca_bundle=ca_file, max_retries=0, flush_at_exit=False)
    ids = [t.track(f"user-{i}", "over_tls") for i in range(n)]
    flushed = timed(lambda: t.flush(30))
    s = t.stats()
    emit("tls", ids=ids, flush=flushed, delivered=s.delivered, errors=repr(s.last_errors))


if __name__ == "__main__":
    mode, url, other, count = sys.argv[3:7]
    {"run": run, "tls": tls}[mode](url, other, int(count))
