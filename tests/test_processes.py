"""Processes: exit flush and exit deadline, os.fork() and multiprocessing children, and a
real pre-forking web server (gunicorn --preload -w 3).

Every child runs from a script in tests/apps/ against a FakePX in this (the test) process,
so what arrived is observed from outside the processes that sent it.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tracker.testing import FakePX

APPS = Path(__file__).parent / "apps"
CHILD = APPS / "px_child.py"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child: no PX_* settings leaking in from the outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PX_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_child(*args: object, timeout: float = 60) -> tuple[list[dict[str, Any]], float, str]:
    """Run px_child.py; its JSON lines, the wall-clock time it exited at, its stderr."""
    proc = subprocess.run(
        [sys.executable, str(CHILD), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
        check=False,
    )
    exited_at = time.time()
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr}"
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return lines, exited_at, proc.stderr


def one(lines: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [line for line in lines if line["kind"] == kind]
    assert len(found) == 1, f"expected one {kind!r} line, got {len(found)}: {lines}"
    return found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def refused_url() -> str:
    """A loopback URL where nothing listens: every connection is refused at once."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def blackhole_url() -> Iterator[str]:
    """A loopback URL that accepts TCP connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def arrived_ids(px: FakePX) -> Counter[str]:
    return Counter(px.event_ids())


class TestExitFlush:
    def test_events_still_pending_when_a_script_ends_are_all_sent_at_exit(self) -> None:
        with FakePX(latency=0.05) as px:
            lines, _, _ = run_child("exit-flush", px.url, 50)
            tracked = one(lines, "tracked")
            after = one(lines, "after_exit")
            assert tracked["pending"] > 0, "nothing was left for the exit flush to do"
            assert arrived_ids(px) == Counter(tracked["ids"])
            assert after["stats"]["delivered"] == 50
            assert after["stats"]["pending"] == 0
            assert after["errors"] == []


class TestExitDeadline:
    @pytest.mark.parametrize("server", ["refused", "blackhole"])
    def test_exit_waits_exit_timeout_then_drops_the_rest_as_shutdown(
        self, server: str, blackhole_url: str
    ) -> None:
        url = refused_url() if server == "refused" else blackhole_url
        lines, exited_at, stderr = run_child("exit-deadline", url, 20)
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


class TestForkedChildren:
    """Events queued by the parent before the fork stay the parent's: sent once, by it."""

    @pytest.mark.parametrize("mode", ["fork", "mp"], ids=["os.fork", "multiprocessing"])
    def test_child_sends_only_its_own_events_and_parent_only_its_own(self, mode: str) -> None:
        # Slow answers keep the parent's events in flight at the moment of the fork.
        with FakePX(latency=0.3) as px:
            lines, _, stderr = run_child(mode, px.url, 5, 7)
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

    REQUESTS = 60

    def test_every_tracked_event_arrives_exactly_once_after_graceful_sigterm(
        self, tmp_path: Path
    ) -> None:
        log_path = tmp_path / "gunicorn.log"
        port = free_port()
        # One sending thread per process (PX_WORKERS) and 0.1 s answers: at 10 events per
        # second, each worker still holds most of its events when SIGTERM comes, and only
        # its exit flush can send them.
        with FakePX(latency=0.1) as px, log_path.open("w") as log:
            env = clean_env(PX_TEST_BASE_URL=px.url, PX_TEST_API_KEY="k-gunicorn", PX_WORKERS="1")
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "--preload",
                    "-w",
                    "3",
                    "-b",
                    f"127.0.0.1:{port}",
                    "--chdir",
                    str(APPS),
                    "--graceful-timeout",
                    "30",
                    "--log-level",
                    "info",
                    "px_wsgi_app:app",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            try:
                wait_until_serving(port, proc, log_path)
                request_ids = [uuid.uuid4().hex for _ in range(self.REQUESTS)]
                with ThreadPoolExecutor(6) as pool:
                    answers = list(
                        pool.map(lambda rid: get_json(port, f"/track?id={rid}"), request_ids)
                    )
                sigterm_at = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            time.sleep(0.3)
            logs = log_path.read_text()
            events = px.events
            sent_after_sigterm = sum(r.arrived_at > sigterm_at for r in px.requests)

        assert proc.returncode == 0, logs
        served = Counter(a["pid"] for a in answers)
        assert len(served) == 3, f"not every worker served requests: {served}\n{logs}"
        assert all(a["event_id"] for a in answers), answers
        assert sent_after_sigterm > 0, "nothing was left for the exit flush to send"

        requests_seen = Counter(
            e["attributes"]["request_id"] for e in events if e["eventName"] == "http_request"
        )
        missing = set(request_ids) - set(requests_seen)
        duplicated = {rid: n for rid, n in requests_seen.items() if n > 1}
        unexpected = set(requests_seen) - set(request_ids)
        report = f"missing={sorted(missing)} duplicated={duplicated} unexpected={unexpected}"
        assert (missing, duplicated, unexpected) == (set(), {}, set()), f"{report}\n{logs}"
        sent_ids = Counter(e["eventId"] for e in events if e["eventName"] == "http_request")
        assert sent_ids == Counter(a["event_id"] for a in answers)
        boots = [e for e in events if e["eventName"] == "app_boot"]
        assert len(boots) == 1, f"app_boot arrived {len(boots)} times: {boots}\n{logs}"
        assert boots[0]["attributes"]["pid"] == proc.pid
        assert len(events) == self.REQUESTS + 1


def get_json(port: int, path: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (response.status, body)
        return dict(json.loads(body))
    finally:
        conn.close()


def wait_until_serving(port: int, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    """Until all three workers have booted and one of them answers."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"gunicorn exited with {proc.returncode}:\n{log_path.read_text()}")
        if log_path.read_text().count("Booting worker") >= 3:
            try:
                get_json(port, "/health")
                return
            except OSError:
                pass
        time.sleep(0.1)
    pytest.fail(f"gunicorn did not serve with 3 workers within 30s:\n{log_path.read_text()}")
