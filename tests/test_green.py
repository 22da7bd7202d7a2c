"""gevent and eventlet, monkey-patched, in real processes (tests/apps/green_child.py) and
under ``gunicorn -k gevent --preload``.

What a user relies on: events arrive; ``flush()``, ``shutdown()`` and the exit flush
keep their deadlines, also while PX hangs; and none of it blocks the hub: a greenlet
that ticks every 10 ms keeps ticking (its longest gap is asserted, not any throughput).
Two orders are run: patched first, as both libraries ask, and patched only in a forked
child of a process that built and used its trackers unpatched, as a server does that
loads the app before its workers patch (``--preload``).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest

from tracker.testing import FakePX

from ._rawserver import RawServer, make_private_ca
from ._support import (
    APPS,
    arrived_ids,
    assert_each_request_arrived_once,
    clean_env,
    kill_group,
    one,
    run_gunicorn,
)

N = 10  # events per phase
# Seconds: the longest a greenlet sleeping 10 ms at a time may wait for the hub (not
# counting time the OS ran other processes: the machine is shared).
GAP = 0.2
DEADLINE = 0.5  # of flush(), shutdown() and exit_timeout while PX hangs (green_child.py)
SLACK = 2.5  # seconds past a deadline for a loaded machine (2 cores, shared)


def _lib(name: str) -> Any:
    return pytest.param(
        name,
        marks=pytest.mark.skipif(
            importlib.util.find_spec(name) is None,
            reason=f"{name} is not installed (the dev extra has it)",
        ),
    )


LIBS = [_lib("gevent"), _lib("eventlet")]


def run_green(*args: object, timeout: float = 60) -> list[dict[str, Any]]:
    """Run tests/apps/green_child.py; its JSON lines (asserting a clean exit). A child
    that hangs is killed with its own forked child (a session of their own)."""
    proc = subprocess.Popen(
        [sys.executable, str(APPS / "green_child.py"), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        pytest.fail(f"the child hung ({timeout}s); it wrote:\n{out}\n{err}")
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{err}"
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def assert_hub_free(phase: dict[str, Any], what: str) -> None:
    assert phase["ticks"] > 0, f"the ticking greenlet never ran during {what}: {phase}"
    assert phase["longest_gap"] < GAP, f"the hub was blocked during {what}: {phase}"


class TestPatched:
    @pytest.mark.parametrize("order", ["before", "preload"], ids=["patched-first", "preload"])
    @pytest.mark.parametrize("lib", LIBS)
    def test_delivery_and_every_deadline_hold_without_blocking_the_hub(
        self, lib: str, order: str
    ) -> None:
        # Answers slower than GAP: a request that held the hub would show.
        with FakePX(latency=0.3) as slow, FakePX() as hung:
            hung.hold()  # PX hangs: no request to it is ever answered
            try:
                lines = run_green(lib, order, "run", slow.url, hung.url, N)
            finally:
                hung.release()
            arrived = arrived_ids(slow)

        sent = one(lines, "slow")
        assert sent["flush"]["result"] is True
        assert (sent["delivered"], sent["pending"]) == (N, 0)
        assert_hub_free(sent["flush"], "a flush against a slow PX")

        full = one(lines, "block")
        assert None not in full["track"]["result"], full  # each waited for room, none refused
        assert full["flushed"] is True
        assert_hub_free(full["track"], "track() waiting for room in a full queue")
        ids = sent["ids"] + full["track"]["result"]
        if order == "preload":
            parent = one(lines, "parent")  # sent by the unpatched parent before the fork
            assert parent["flushed"] is True
            ids.append(parent["id"])
        assert arrived == Counter(ids)

        stuck = one(lines, "hung")
        for call in ("flush", "shutdown"):
            assert stuck[call]["result"] is False, stuck
            assert stuck[call]["seconds"] < DEADLINE + SLACK, f"{call}() overran: {stuck}"
            assert_hub_free(stuck[call], f"{call}({DEADLINE}) while PX hangs")
        assert stuck["pending"] == 0
        assert stuck["dropped"] == {"shutdown": N}

        assert one(lines, "main_end")["pending"] == N
        left = one(lines, "after_exit")  # written after the tracker's exit flush
        assert left["exit_flush_seconds"] < DEADLINE + SLACK, f"exit_timeout overran: {left}"
        assert (left["pending"], left["dropped"]) == (0, {"shutdown": N})
        assert_hub_free(left, "the exit flush while PX hangs")

    @pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
    @pytest.mark.parametrize("lib", LIBS)
    def test_https_works_when_patched_after_the_tracker_was_imported(
        self, lib: str, tmp_path: Path, raw_server: Callable[..., RawServer]
    ) -> None:
        # urllib3 holds the ssl module's original SSLContext: a context of it, set up
        # after the patch, raised RecursionError and every event failed.
        ca = make_private_ca(tmp_path)
        server = raw_server([], default="ok", tls=ca.server_context())
        report = one(run_green(lib, "after", "tls", server.url, ca.ca_file, 3), "tls")
        assert report["delivered"] == 3, report["errors"]
        assert report["flush"]["result"] is True
        assert sorted(seen.event_id for seen in server.seen) == sorted(report["ids"])
        assert_hub_free(report["flush"], "a flush over TLS")


@pytest.mark.skipif(importlib.util.find_spec("gevent") is None, reason="gevent is not installed")
class TestGunicornGeventPreload:
    """``gunicorn -k gevent --preload``: the app (tests/apps/px_wsgi_app.py) configures the
    tracker and tracks ``app_boot`` in the master, unpatched; each worker patches after
    the fork, then serves requests that track."""

    def test_every_event_arrives_once_and_the_server_stops_at_sigterm(self, tmp_path: Path) -> None:
        # One sender per process and 50 ms answers: the workers still hold events when
        # SIGTERM comes (at most 2 s' worth each, well inside exit_timeout).
        with FakePX(latency=0.05) as px:
            run = run_gunicorn(
                px, tmp_path, "-k", "gevent", workers=3, requests=40, api_key="k-gevent"
            )
        # A worker that does not stop is killed after the graceful timeout, its events lost.
        assert "SIGKILL" not in run.logs, run.logs
        assert run.stopped_in < 20, f"the server took {run.stopped_in:.1f}s to stop:\n{run.logs}"
        assert_each_request_arrived_once(run)
