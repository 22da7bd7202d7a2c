"""What only a real process shows at fork: os.fork() and multiprocessing children start
empty and send only their own events, and a real pre-forking web server (gunicorn
--preload -w 3) loses none at a graceful SIGTERM."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tracker.testing import FakePX

from ._support import (
    PRELUDE,
    arrived_ids,
    assert_each_request_arrived_once,
    one,
    run_app,
    run_code,
    run_gunicorn,
)


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
            done, _ = run_code(code)
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


class TestForkedChildren:
    """Events queued by the parent before the fork stay the parent's: sent once, by it."""

    @pytest.mark.parametrize("mode", ["fork", "mp"], ids=["os.fork", "multiprocessing"])
    def test_child_sends_only_its_own_events_and_parent_only_its_own(self, mode: str) -> None:
        # Slow answers keep the parent's events in flight at the moment of the fork.
        with FakePX(latency=0.3) as px:
            lines, _, stderr = run_app(mode, px.url, 5, 7)
            parent = one(lines, "parent_tracked")
            assert parent["pending"] == 5, "the parent's events were not pending at fork time"
            start = one(lines, "child_start")
            assert start["pid"] != parent["pid"]
            assert start["stats"]["tracked"] == 0
            assert start["stats"]["pending"] == 0
            assert start["errors"] == []
            child_ids = one(lines, "child_tracked")["ids"]
            assert None not in child_ids
            assert one(lines, "child_exit")["status"] == 0, stderr
            assert one(lines, "parent_done")["flushed"] is True

            assert px.wait_for(12, timeout=10)
            time.sleep(0.5)  # anything sent twice would arrive about now
            arrived = arrived_ids(px)
            assert arrived == Counter(parent["ids"] + child_ids), stderr
            by_id = {e["eventId"]: e for e in px.events}
            assert {by_id[i]["eventName"] for i in parent["ids"]} == {"parent_event"}
            assert {by_id[i]["eventName"] for i in child_ids} == {"child_event"}

            final = one(lines, "child_done" if mode == "fork" else "child_after_exit")
            assert final["stats"]["tracked"] == 7
            assert final["stats"]["delivered"] == 7
            assert final["stats"]["pending"] == 0
            assert final["errors"] == []
            parent_stats = one(lines, "parent_done")["stats"]
            assert parent_stats["tracked"] == parent_stats["delivered"] == 5


class TestGunicornPreload:
    """A WSGI app configured at import in gunicorn's master, 3 forked sync workers."""

    def test_every_tracked_event_arrives_exactly_once_after_graceful_sigterm(
        self, tmp_path: Path
    ) -> None:
        # One sending thread per process (PX_WORKERS) and 0.1 s answers: at 10 events per
        # second, each worker still holds most of its events when SIGTERM comes, and only
        # its exit flush can send them.
        with FakePX(latency=0.1) as px:
            run = run_gunicorn(px, tmp_path, workers=3, requests=60, api_key="k-gunicorn")
        assert_each_request_arrived_once(run)
        served = Counter(a["pid"] for a in run.answers)
        assert len(served) == 3, f"not every worker served requests: {served}\n{run.logs}"
