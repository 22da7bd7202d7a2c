"""What only a real process shows: the exit flush, the exit deadline, and fork()."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

from tracker.testing import FakePX

from ._support import API_KEY, PRODUCT_KEY


def run_child(
    code: str, env: dict[str, str] | None = None, timeout: float = 60
) -> tuple[subprocess.CompletedProcess[str], float]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PX_")}
    environment.update(env or {})
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        check=False,
    )
    return done, time.monotonic() - started


PRELUDE = f"""
import os, sys, json, time
from tracker import Tracker
def tracker_for(url, **options):
    options.setdefault("product_key", {PRODUCT_KEY!r})
    return Tracker({API_KEY!r}, base_url=url, **options)
"""

IMPORT_ONLY = "import tracker"


def import_time() -> float:
    _, elapsed = run_child(IMPORT_ONLY)
    return elapsed


class TestExitFlush:
    def test_events_queued_at_exit_are_delivered(self, fake_px: FakePX) -> None:
        fake_px.latency = 0.01
        done, _ = run_child(
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
        done, _ = run_child(
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

    def test_exit_never_waits_longer_than_exit_timeout(self, fake_px: FakePX) -> None:
        fake_px.hold()  # PX hangs: requests in flight never answer
        baseline = import_time()
        # atexit runs last-registered first: this report is registered before tracker's
        # own exit flush, so it runs after it.
        done, elapsed = run_child(
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
        done, elapsed = run_child(
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


class TestFork:
    def test_child_starts_empty_sends_its_own_and_never_the_parents(self, fake_px: FakePX) -> None:
        fake_px.hold()  # the parent's events are still queued when it forks
        code = (
            PRELUDE
            + f"""
import warnings
warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
t = tracker_for({fake_px.url!r}, workers=1)
parent_ids = [t.track("parent", f"p{{i}}") for i in range(5)]
read_end, write_end = os.pipe()
pid = os.fork()
if pid == 0:
    stats = t.stats()
    ids = [t.track("child", f"c{{i}}") for i in range(3)]
    ok = t.flush(20)
    os.write(write_end, json.dumps({{"tracked_at_start": stats.tracked,
        "pending_at_start": stats.pending, "ids": ids, "flushed": ok,
        "delivered": t.stats().delivered}}).encode())
    os._exit(0)
os.close(write_end)
child = json.loads(os.read(read_end, 65536))
os.waitpid(pid, 0)
print(json.dumps({{"parent": parent_ids, "child": child}}))
"""
        )
        # The child's flush needs the server; the parent's events wait until it answers.
        releaser = threading.Timer(1.0, fake_px.release)
        releaser.start()
        try:
            done, _ = run_child(code)
        finally:
            releaser.cancel()
            fake_px.release()
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        child = report["child"]
        assert child["tracked_at_start"] == 0
        assert child["pending_at_start"] == 0
        assert child["flushed"] is True
        assert child["delivered"] == 3
        ids = fake_px.event_ids()
        for event_id in report["parent"] + child["ids"]:
            assert ids.count(event_id) == 1, event_id
        assert len(ids) == 8


class TestThreadsRefused:
    def test_the_exiting_thread_sends_the_queue_itself(self, fake_px: FakePX) -> None:
        # What Python 3.12+ does to a thread started during interpreter shutdown, here
        # imposed from the start: the tracker must still deliver at exit.
        done, _ = run_child(
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
