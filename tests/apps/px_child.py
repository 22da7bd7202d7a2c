"""Child processes for tests/test_fork.py and tests/test_exit.py.

    python px_child.py exit-flush URL N      track N events, exit normally (no flush call)
    python px_child.py exit-deadline URL N   same with exit_timeout=1, for a dead server
    python px_child.py fork URL P C          P events in the parent, os.fork(), C in the child
    python px_child.py mp URL P C            same with a multiprocessing "fork" child

Every line on stdout is one JSON object with a "kind". The last one, "after_exit", is
written by an atexit hook registered *before* ``tracker`` is imported: atexit runs hooks
last-in first-out, so it runs after the tracker's own exit flush and reports its outcome.
"""

from __future__ import annotations

import atexit
import json
import multiprocessing
import multiprocessing.util
import os
import sys
import time
from typing import Any, Callable, Optional

API_KEY = "k-child"
PRODUCT_KEY = "AP-CHILD-1"

_state: dict[str, Any] = {"tracker": None, "errors": []}


def emit(kind: str, **fields: Any) -> None:
    fields.update(kind=kind, pid=os.getpid(), t=time.time())
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()  # nothing buffered may be inherited by a forked child


def stats_of(t: Any) -> dict[str, Any]:
    s = t.stats()
    return {
        "tracked": s.tracked,
        "delivered": s.delivered,
        "failed": s.failed,
        "dropped": s.dropped,
        "pending": s.pending,
        "failed_by_reason": dict(s.failed_by_reason),
        "dropped_by_reason": dict(s.dropped_by_reason),
    }


def _report(kind: str = "after_exit") -> None:
    t = _state["tracker"]
    if t is not None:
        emit(kind, stats=stats_of(t), errors=_state["errors"])


atexit.register(_report)

import tracker  # noqa: E402  (after the atexit hook above, on purpose)


def on_error(event: Any, error: Any) -> None:
    _state["errors"].append([event.event_id, error.reason])


def make_tracker(url: str, **options: Any) -> tracker.Tracker:
    t = tracker.Tracker(
        API_KEY, product_key=PRODUCT_KEY, base_url=url, on_error=on_error, **options
    )
    _state["tracker"] = t
    return t


def track_many(t: tracker.Tracker, who: str, n: int) -> list[Optional[str]]:
    return [
        t.track(f"{who}-user", f"{who}_event", attributes={"who": who, "i": i}) for i in range(n)
    ]


def exit_flush(url: str, n: int) -> None:
    t = make_tracker(url)
    ids = track_many(t, "exit", n)
    emit("tracked", ids=ids, pending=t.stats().pending)


def exit_deadline(url: str, n: int) -> None:
    t = make_tracker(url, exit_timeout=1.0)
    ids = track_many(t, "deadline", n)
    emit("tracked", ids=ids, pending=t.stats().pending)
    emit("main_done")


def _child_body(t: tracker.Tracker, c: int) -> None:
    emit("child_start", stats=stats_of(t), errors=list(_state["errors"]))
    _state["errors"].clear()
    emit("child_tracked", ids=track_many(t, "child", c))


def fork(url: str, p: int, c: int) -> None:
    t = make_tracker(url)
    emit("parent_tracked", ids=track_many(t, "parent", p), pending=t.stats().pending)
    pid = os.fork()
    if pid == 0:
        try:
            _child_body(t, c)
            flushed = t.flush(timeout=30)
            emit("child_done", flushed=flushed, stats=stats_of(t), errors=_state["errors"])
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    emit("child_exit", status=status)
    emit("parent_done", flushed=t.flush(timeout=30), stats=stats_of(t))


def _mp_child(c: int) -> None:
    t = _state["tracker"]
    _child_body(t, c)
    # Runs after the tracker's own multiprocessing exit hook (exitpriority 100 > 1).
    multiprocessing.util.Finalize(None, _report, args=("child_after_exit",), exitpriority=1)
    # ...and return without flushing: the package's exit hook must send the events.


def mp(url: str, p: int, c: int) -> None:
    t = make_tracker(url)
    emit("parent_tracked", ids=track_many(t, "parent", p), pending=t.stats().pending)
    process = multiprocessing.get_context("fork").Process(target=_mp_child, args=(c,))
    process.start()
    process.join(60)
    emit("child_exit", status=process.exitcode)
    emit("parent_done", flushed=t.flush(timeout=30), stats=stats_of(t))


def main(argv: list[str]) -> None:
    mode, url, *numbers = argv
    counts = [int(n) for n in numbers]
    modes: dict[str, Callable[..., None]] = {
        "exit-flush": exit_flush,
        "exit-deadline": exit_deadline,
        "fork": fork,
        "mp": mp,
    }
    modes[mode](url, *counts)


if __name__ == "__main__":
    main(sys.argv[1:])
