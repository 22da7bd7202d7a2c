"""multiprocessing and concurrent.futures children for tests/test_mp_children.py.

    python mp_app.py process METHOD P C            P events in the parent, then one
                                                   multiprocessing Process child tracking C
    python mp_app.py executor METHOD P C JOBS MAX  P in the parent, then JOBS jobs of C events
                                                   each on a ProcessPoolExecutor of 2 workers
                                                   (max_tasks_per_child=MAX unless 0)
    python mp_app.py pool METHOD P C JOBS MAX      the same on a multiprocessing Pool of 2
                                                   (maxtasksperchild=MAX unless 0), closed
                                                   and joined
    python mp_app.py deadline METHOD C             one child tracking C events on each of two
                                                   trackers (exit_timeout=1) against a PX
                                                   that never answers

The process-wide tracker is configured when this module is imported, from
``PX_TEST_BASE_URL``: in the parent, and again in every "spawn" or "forkserver" child, which
imports it anew (as ``__mp_main__``) after it was started. With ``PX_TEST_CONFIGURE=child``
the parent configures it under the ``__main__`` guard, and a spawned child only inside the
job, once multiprocessing started it. Children never flush: they return, and the tracker's
own exit hook must send what they tracked. One JSON line on stdout: what the parent and
each child tracked (ids, and how many were still pending when the child returned), the
children's exit codes, whether the parent's own flush ended.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.util
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import tracker

CONFIGURE_IN_CHILD = os.environ.get("PX_TEST_CONFIGURE") == "child"
_state: dict[str, Any] = {"configured_in": 0, "trackers": []}


def configure() -> None:
    _state["configured_in"] = os.getpid()  # a forked child inherits it, with the tracker
    _state["trackers"] = [
        tracker.configure(
            api_key="k-mp",
            product_key="AP-MP-1",
            base_url=os.environ["PX_TEST_BASE_URL"],
            workers=1,
            exit_timeout=float(os.environ.get("PX_TEST_EXIT_TIMEOUT", "5")),
        )
    ]


if not CONFIGURE_IN_CHILD:
    configure()


def track(who: str, n: int) -> dict[str, Any]:
    if not _state["configured_in"]:
        configure()
    ids = [
        t.track(f"{who}-user", f"{who}_event", attributes={"pid": os.getpid(), "i": i})
        for t in _state["trackers"]
        for i in range(n)
    ]
    pending = sum(t.stats().pending for t in _state["trackers"])
    return {"ids": ids, "pending": pending, "pid": os.getpid(), "returned_at": time.time()}


def child(results: Any, n: int) -> None:
    results.put(track("child", n))  # and return without flushing


def job(n: int) -> dict[str, Any]:
    return track("child", n)


def run_process(method: str, p: int, c: int) -> dict[str, Any]:
    context = multiprocessing.get_context(method)
    parent = track("parent", p)
    results = context.SimpleQueue()
    process = context.Process(target=child, args=(results, c))
    process.start()
    children = [results.get()]
    process.join(60)
    return {"parent": parent, "children": children, "exitcodes": [process.exitcode]}


def run_executor(method: str, p: int, c: int, jobs: int, max_tasks: int) -> dict[str, Any]:
    context = multiprocessing.get_context(method)
    parent = track("parent", p)
    options: dict[str, Any] = {"max_workers": 2, "mp_context": context}
    if max_tasks:
        options["max_tasks_per_child"] = max_tasks
    with ProcessPoolExecutor(**options) as executor:
        children = list(executor.map(job, [c] * jobs))
    return {"parent": parent, "children": children, "exitcodes": []}


def run_pool(method: str, p: int, c: int, jobs: int, max_tasks: int) -> dict[str, Any]:
    context = multiprocessing.get_context(method)
    parent = track("parent", p)
    pool = context.Pool(2, maxtasksperchild=max_tasks or None)
    children = pool.map(job, [c] * jobs, chunksize=1)
    pool.close()  # not terminate(), which kills the workers (as leaving `with Pool()` does)
    pool.join()
    return {"parent": parent, "children": children, "exitcodes": []}


def report_after_exit(results: Any) -> None:
    """In the child, after the tracker's exit hook (a lower exit priority runs later)."""
    results.put(
        {
            "dropped_by_reason": [dict(t.stats().dropped_by_reason) for t in _state["trackers"]],
            "pending": [t.stats().pending for t in _state["trackers"]],
            "at": time.time(),
        }
    )


def deadline_child(results: Any, n: int) -> None:
    _state["trackers"].append(
        tracker.Tracker(
            "k-mp-2",
            product_key="AP-MP-2",
            base_url=os.environ["PX_TEST_BASE_URL"],
            workers=1,
            exit_timeout=1.0,
        )
    )
    multiprocessing.util.Finalize(None, report_after_exit, args=(results,), exitpriority=1)
    results.put(track("child", n))


def run_deadline(method: str, c: int) -> dict[str, Any]:
    context = multiprocessing.get_context(method)
    results = context.SimpleQueue()
    process = context.Process(target=deadline_child, args=(results, c))
    process.start()
    tracked = results.get()
    after_exit = results.get()
    process.join(60)
    return {
        "children": [tracked],
        "after_exit": after_exit,
        "exited_at": time.time(),
        "exitcodes": [process.exitcode],
        "parent": {"ids": []},
    }


def main(argv: list[str]) -> None:
    if CONFIGURE_IN_CHILD:
        configure()
    mode, method, *numbers = argv
    counts = [int(n) for n in numbers]
    runs = {
        "process": run_process,
        "executor": run_executor,
        "pool": run_pool,
        "deadline": run_deadline,
    }
    report = runs[mode](method, *counts)
    report["parent_flushed"] = tracker.flush(timeout=30)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
