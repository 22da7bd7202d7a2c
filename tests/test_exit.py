"""What only a real process shows at exit: the exit flush, one exit deadline for the whole
process, trackers nobody holds, a test's fake clock, threads refused at shutdown.

Children run either code given inline (``run_code``) or tests/apps/px_child.py
(``run_app``), against a FakePX or socket in this (the test) process, so what arrived is
observed from outside the processes that sent it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from tracker.testing import FakePX

from ._support import PRELUDE, arrived_ids, import_time, one, refused_url, run_app, run_code


@pytest.fixture
def blackhole_url() -> Iterator[str]:
    """A loopback URL that accepts TCP connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


class TestExitFlush:
    def test_events_queued_at_exit_are_delivered(self, fake_px: FakePX) -> None:
        fake_px.latency = 0.01
        done, _ = run_code(
            PRELUDE
            + f"""
t = tracker_for({fake_px.url!r}, workers=2)
for i in range(50):
    t.track("u", f"exit-{{i}}")
print(t.stats().pending > 0)
"""
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "True"  # they were still pending when main ended
        assert len(fake_px.events) == 50

    def test_flush_at_exit_false_leaves_them(self, fake_px: FakePX) -> None:
        fake_px.hold()
        done, _ = run_code(
            PRELUDE
            + f"""
t = tracker_for({fake_px.url!r}, flush_at_exit=False, workers=1)
for i in range(5):
    t.track("u", "never")
"""
        )
        fake_px.release()
        assert done.returncode == 0, done.stderr
        assert len(fake_px.events) <= 1  # at most the one a worker had already sent

    def test_events_still_pending_when_a_script_ends_are_all_sent_at_exit(self) -> None:
        with FakePX(latency=0.05) as px:
            lines, _, _ = run_app("exit-flush", px.url, 50)
            tracked = one(lines, "tracked")
            after = one(lines, "after_exit")
            assert tracked["pending"] > 0, "nothing was left for the exit flush to do"
            assert arrived_ids(px) == Counter(tracked["ids"])
            assert after["stats"]["delivered"] == 50
            assert after["stats"]["pending"] == 0
            assert after["errors"] == []


class TestExitDeadline:
    def test_exit_never_waits_longer_than_exit_timeout(self, fake_px: FakePX) -> None:
        fake_px.hold()  # PX hangs: requests in flight never answer
        baseline = import_time()
        # atexit runs last-registered first: this report is registered before tracker's
        # own exit flush, so it runs after it.
        done, elapsed = run_code(
            """
import atexit, json
state = {}
atexit.register(lambda: print(json.dumps({"dropped": len(state["dropped"]),
    "reasons": sorted(set(state["dropped"])), "pending": state["t"].stats().pending})))
"""
            + PRELUDE
            + f"""
dropped = state["dropped"] = []
state["t"] = t = tracker_for({fake_px.url!r}, exit_timeout=1.0, timeout=30,
                on_error=lambda e, err: dropped.append(err.reason))
for i in range(200):
    t.track("u", "stuck")
"""
        )
        fake_px.release()
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report == {"dropped": 200, "reasons": ["shutdown"], "pending": 0}
        assert elapsed - baseline < 1.0 + 2.5, (elapsed, baseline)

    def test_exit_against_a_dead_server_is_bounded_too(self) -> None:
        with FakePX() as px:
            url = px.url  # closed when the block ends: connection refused
        baseline = import_time()
        done, elapsed = run_code(
            """
import atexit, json
state = {}
atexit.register(lambda: print(json.dumps(state["t"].stats().dropped_by_reason)))
"""
            + PRELUDE
            + f"""
state["t"] = t = tracker_for({url!r}, exit_timeout=1.0)
for i in range(1000):
    t.track("u", "lost")
"""
        )
        assert done.returncode == 0, done.stderr
        assert elapsed - baseline < 1.0 + 2.5
        assert json.loads(done.stdout)["shutdown"] == 1000

    @pytest.mark.parametrize("server", ["refused", "blackhole"])
    def test_exit_waits_exit_timeout_then_drops_the_rest_as_shutdown(
        self, server: str, blackhole_url: str
    ) -> None:
        url = refused_url() if server == "refused" else blackhole_url
        lines, exited_at, stderr = run_app("exit-deadline", url, 20)
        tracked = one(lines, "tracked")
        waited = exited_at - one(lines, "main_done")["t"]
        # exit_timeout=1: the flush may take 1 s; the rest (joining threads for at most
        # 0.5 s, interpreter teardown) gets a generous margin on a loaded machine.
        assert 0.9 <= waited <= 1.0 + 3.0, f"exit took {waited:.2f}s\n{stderr}"
        after = one(lines, "after_exit")
        stats = after["stats"]
        assert stats["pending"] == 0
        assert stats["dropped_by_reason"]["shutdown"] == 20
        assert stats["tracked"] == stats["dropped"] == 20
        assert Counter(eid for eid, _ in after["errors"]) == Counter(tracked["ids"])
        assert {reason for _, reason in after["errors"]} == {"shutdown"}


class TestThreadsRefused:
    def test_the_exiting_thread_sends_the_queue_itself(self, fake_px: FakePX) -> None:
        # What Python 3.12+ does to a thread started during interpreter shutdown, here
        # imposed from the start: the tracker must still deliver at exit.
        done, _ = run_code(
            PRELUDE
            + f"""
import threading
def refuse(self):
    raise RuntimeError("can't create new thread at interpreter shutdown")
threading.Thread.start = refuse
t = tracker_for({fake_px.url!r}, workers=4)
for i in range(20):
    t.track("u", f"inline-{{i}}")
print(t.stats().pending)
"""
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "20"  # nothing could be sent before exit
        assert sorted(e["eventName"] for e in fake_px.events) == sorted(
            f"inline-{i}" for i in range(20)
        )


def main_done_and_exit(code: str, timeout: float = 60) -> tuple[dict[str, object], float, str]:
    """Run ``code``, which ends by printing one JSON object with ``main_done`` (its
    time.time()); that object, the seconds from then until the process had exited, and
    its stderr."""
    try:
        done, _ = run_code(code, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the child did not exit within {timeout} s")
    exited_at = time.time()
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[0])
    return report, exited_at - float(report["main_done"]), done.stderr


class TestOneExitDeadline:
    """issue 9 items 2 and 9: exit_timeout bounds the whole exit, in real time."""

    def test_several_trackers_against_a_hanging_px_share_one_exit_timeout(
        self, blackhole_url: str
    ) -> None:
        # Each tracker used to wait its own exit_timeout (plus ~0.5 s), one after another.
        _, waited, stderr = main_done_and_exit(
            """
import atexit, json
state = {}
atexit.register(lambda: print(json.dumps([t.stats().dropped_by_reason for t in state["ts"]])))
"""
            + PRELUDE
            + f"""
state["ts"] = ts = [tracker_for({blackhole_url!r}, exit_timeout=1.0, timeout=30, workers=2)
                    for _ in range(4)]
for t in ts:
    for i in range(10):
        t.track("u", "stuck")
print(json.dumps({{"main_done": time.time()}}))
"""
        )
        assert waited <= 1.0 + 2.0, f"exit took {waited:.2f}s for 4 trackers\n{stderr}"
        assert waited >= 0.9, waited  # they did wait for PX, once

    @pytest.mark.parametrize("server", ["refused", "blackhole"])
    def test_a_tracker_on_a_fake_clock_does_not_hold_the_exit(
        self, server: str, blackhole_url: str
    ) -> None:
        # The exit deadline ran on the FakeClock, which nothing advances at exit: a test
        # suite leaving such a tracker behind hung for ever.
        url = refused_url() if server == "refused" else blackhole_url
        report, waited, stderr = main_done_and_exit(
            PRELUDE
            + f"""
from tracker.testing import FakeClock
t = tracker_for({url!r}, clock=FakeClock(), exit_timeout=1.0, timeout=30)
t.track("u", "pending at exit")
print(json.dumps({{"main_done": time.time(), "pending": t.stats().pending}}))
""",
            timeout=30,
        )
        assert report["pending"] == 1
        assert waited <= 1.0 + 2.0, f"exit took {waited:.2f}s\n{stderr}"


class TestDroppedTrackers:
    """issue 9 item 8: a Tracker nobody holds costs nothing once settled, and what it still
    held at exit is sent."""

    def test_a_tracker_per_job_leaves_no_threads_behind(self, fake_px: FakePX) -> None:
        report, _, stderr = main_done_and_exit(
            PRELUDE
            + f"""
import gc, threading
def job(i):
    t = tracker_for({fake_px.url!r}, workers=2)
    t.track("u", f"job-{{i}}")
    assert t.flush(10)
for i in range(30):
    job(i)
gc.collect()
deadline = time.monotonic() + 10
def senders():
    return [th.name for th in threading.enumerate() if th.name.startswith("px-tracker")]
while senders() and time.monotonic() < deadline:
    time.sleep(0.01)
print(json.dumps({{"main_done": time.time(), "threads": senders()}}))
"""
        )
        assert report["threads"] == [], stderr
        assert sorted(e["eventName"] for e in fake_px.events) == sorted(
            f"job-{i}" for i in range(30)
        )

    def test_what_a_dropped_tracker_still_holds_is_sent_at_exit(self, fake_px: FakePX) -> None:
        fake_px.latency = 0.05
        report, _, stderr = main_done_and_exit(
            PRELUDE
            + f"""
import gc
def job(i):
    t = tracker_for({fake_px.url!r}, workers=1)
    for n in range(3):
        t.track("u", f"job-{{i}}-{{n}}")
    return t.stats().pending
pending = [job(i) for i in range(5)]
gc.collect()
print(json.dumps({{"main_done": time.time(), "pending": pending}}))
"""
        )
        assert sum(report["pending"]) > 0, "nothing was left for the exit flush"  # type: ignore[arg-type]
        assert Counter(e["eventName"] for e in fake_px.events) == Counter(
            f"job-{i}-{n}" for i in range(5) for n in range(3)
        ), stderr
