"""multiprocessing children, every start method, multiprocessing's Pool and
concurrent.futures' process pools (issue 14 item 3): what a child tracks and never
flushes arrives, each event once, and the parent's events are never sent by a child.

Children leave through ``os._exit()`` (forked ones, forkserver's) or through the
interpreter's exit after multiprocessing's own (spawned ones): the tracker's exit flush
must run in both, registered once, even when the child imported the tracker itself after
it started (spawn, forkserver: no fork hook runs there). tests/apps/mp_app.py is the
program; it configures the process-wide tracker at import, as a user's module would, and
nothing else. A slow FakePX keeps what each child tracked pending when it returns, so
only the exit hook can send it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import pytest

from tracker.testing import FakePX

from ._support import APPS, PRELUDE, clean_env, run_code

METHODS = ["fork", "spawn", "forkserver"]
# ProcessPoolExecutor(max_tasks_per_child=...) exists from 3.11 on (and refuses "fork").
MAX_TASKS = 2 if sys.version_info >= (3, 11) else 0


def run_mp_app(px: FakePX, *args: object, **env: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(APPS / "mp_app.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(PX_TEST_BASE_URL=px.url, **env),
        check=False,
    )
    assert done.returncode == 0, f"mp_app failed ({done.returncode}):\n{done.stderr}"
    report: dict[str, Any] = json.loads(done.stdout)
    report["stderr"] = done.stderr
    return report


def assert_each_arrived_once(px: FakePX, report: dict[str, Any]) -> None:
    parent = report["parent"]["ids"]
    children = [i for child in report["children"] for i in child["ids"]]
    assert None not in parent + children, report
    assert px.wait_for(len(parent) + len(children), timeout=15), report["stderr"]
    time.sleep(0.3)  # anything sent twice would arrive about now
    arrived = Counter(px.event_ids())
    assert arrived == Counter(parent + children), report["stderr"]
    by_id = {event["eventId"]: event for event in px.events}
    assert {by_id[i]["eventName"] for i in children} == {"child_event"}
    assert all(code == 0 for code in report["exitcodes"]), report
    assert report["parent_flushed"] is True
    # What the children tracked was still queued when they returned: only the tracker's
    # exit hook sent it.
    assert sum(child["pending"] for child in report["children"]) > 0, report


class TestProcess:
    @pytest.mark.parametrize("method", METHODS)
    def test_a_childs_unflushed_events_arrive_once_and_the_parents_only_from_it(
        self, method: str
    ) -> None:
        with FakePX(latency=0.05) as px:
            report = run_mp_app(px, "process", method, 3, 5)
            assert report["children"][0]["pid"] != report["parent"]["pid"]
            assert_each_arrived_once(px, report)

    def test_a_tracker_first_built_in_the_running_child_flushes_at_its_exit(self) -> None:
        # The child imports the module without configuring; the job configures it, once
        # multiprocessing has started the child: no after-fork hook runs after that, and a
        # forkserver child leaves through os._exit (a spawned one would run atexit).
        with FakePX(latency=0.05) as px:
            report = run_mp_app(px, "process", "forkserver", 3, 5, PX_TEST_CONFIGURE="child")
            assert_each_arrived_once(px, report)


class TestProcessPoolExecutor:
    # Workers leave when recycled (max_tasks_per_child, where Python has it: 3 jobs on 2
    # workers that run 2 each, so one is recycled) and when the executor shuts down.
    @pytest.mark.parametrize(
        ("method", "max_tasks"),
        [("spawn", MAX_TASKS), ("forkserver", MAX_TASKS)],
    )
    def test_the_workers_unflushed_events_arrive_once(self, method: str, max_tasks: int) -> None:
        with FakePX(latency=0.05) as px:
            report = run_mp_app(px, "executor", method, 3, 3, 3, max_tasks)
            assert_each_arrived_once(px, report)
            workers = Counter(child["pid"] for child in report["children"])
            if max_tasks:
                assert sorted(workers.values()) == [1, 2], workers  # one was recycled


class TestPool:
    def test_workers_recycled_by_maxtasksperchild_send_what_they_tracked(self) -> None:
        with FakePX(latency=0.05) as px:
            report = run_mp_app(px, "pool", "forkserver", 3, 3, 3, 1)
            assert_each_arrived_once(px, report)
            workers = Counter(child["pid"] for child in report["children"])
            assert sorted(workers.values()) == [1, 1, 1], workers


class TestExitDeadline:
    def test_a_childs_exit_waits_one_exit_timeout_for_all_its_trackers(self) -> None:
        with FakePX() as px:
            px.hold()  # PX never answers: both trackers wait out the deadline, together
            try:
                report = run_mp_app(px, "deadline", "forkserver", 5, PX_TEST_EXIT_TIMEOUT="1")
            finally:
                px.release()
        child = report["children"][0]
        after = report["after_exit"]
        assert report["exitcodes"] == [0], report["stderr"]
        assert after["pending"] == [0, 0]
        dropped = [{k: n for k, n in d.items() if n} for d in after["dropped_by_reason"]]
        assert dropped == [{"shutdown": 5}, {"shutdown": 5}], report
        waited = report["exited_at"] - child["returned_at"]
        assert 0.9 <= waited <= 1.0 + 2.5, f"the child's exit took {waited:.2f}s"


def test_the_tracker_imports_none_of_the_hosts_it_hooks() -> None:
    # Its exit hooks join multiprocessing, billiard and Celery only where the program
    # imported them: a plain script (forking too) pays for none of them.
    done, _ = run_code(
        PRELUDE
        + """
t = tracker_for("http://127.0.0.1:9", flush_at_exit=False)
t.track("u", "e")
pid = os.fork()
if pid == 0:
    t.track("u", "in the child")
    os._exit(0)
os.waitpid(pid, 0)
t.shutdown(0)
print(json.dumps(sorted(
    m for m in sys.modules if m.split(".")[0] in ("multiprocessing", "billiard", "celery")
)))
"""
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
