"""Under real uWSGI (pre-fork, forking from C where Python's fork hooks never run).

The app (tests/apps/px_wsgi_app.py) configures the process-wide tracker at import and
tracks one ``app_boot`` event there: without ``--lazy-apps`` that is the master, and a
master whose sender thread held the GIL when uWSGI forked used to leave workers hung at
birth. What a user relies on: every worker answers, every event arrives exactly once
(the master's too, sent by one worker), with distinct eventIds across recycled workers,
and what workers still hold when they are recycled or the server stops is sent.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
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

from tests._support import (
    APPS,
    PRELUDE,
    clean_env,
    free_port,
    get_json,
    run_code,
    stop_group,
    wait_until,
)
from tracker.testing import FakePX

UWSGI = shutil.which("uwsgi", path=os.path.dirname(sys.executable)) or shutil.which("uwsgi")
# The last release that can run Python without threads, beside the current one: .ci/run
# installs it with `pip install --no-deps --target .venv/uwsgi-2.0.26 uWSGI==2.0.26`.
UWSGI_OLD = Path(sys.prefix) / "uwsgi-2.0.26" / "bin" / "uwsgi"
pytestmark = [
    pytest.mark.skipif(UWSGI is None, reason="uWSGI is not installed (the dev extra has it)"),
    pytest.mark.timeout(240),
]
ROOT = Path(__file__).resolve().parent.parent


# uWSGI's own recipe for a graceful SIGTERM: each worker finishes the request it is
# serving, then leaves (and runs Python's exit hooks). Without it, SIGTERM with
# --die-on-term (or SIGINT, SIGQUIT) kills workers at once, and uWSGI skips the exit hooks
# of a worker that is inside a request (plugins/python/python_plugin.c).
GRACEFUL_SIGTERM = ("--hook-master-start", "unix_signal:15 gracefully_kill_them_all")


@contextlib.contextmanager
def uwsgi(
    px: FakePX,
    log_path: Path,
    *options: str,
    workers: int = 4,
    binary: str | None = UWSGI,
    **env: str,
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A uWSGI server running the test app, stopped (and waited for) on the way out."""
    assert binary is not None
    port = free_port()
    environment = clean_env(
        PX_TEST_BASE_URL=px.url,
        PX_TEST_API_KEY="k-uwsgi",
        PX_TEST_PRODUCT_KEY="AP-UWSGI-1",
        PX_TEST_BOOT_ID="uwsgi-master",
        PYTHONPATH=os.pathsep.join([str(APPS), str(ROOT)]),
        **env,
    )
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                *(binary, "--http-socket", f"127.0.0.1:{port}", "--module", "px_wsgi_app:app"),
                *("--processes", str(workers), "--die-on-term", "--need-app", *options),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,  # its own process group: no worker outlives the test
        )
    try:
        yield proc, port
    finally:
        # Without --master the other workers are not the first one's children: SIGTERM
        # to it leaves them running (uWSGI expects the whole group to be signalled).
        stop_group(proc)


def get_retrying(port: int, path: str, deadline: float) -> dict[str, Any]:
    """GET, retried while the server is not listening yet (or a worker is respawning)."""
    while True:
        try:
            return get_json(port, path, timeout=10)
        except (OSError, http.client.HTTPException, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def track_concurrently(port: int, n: int, deadline: float) -> list[dict[str, Any]]:
    """``n`` tracking requests, 8 at a time; the answers (``pid``, ``event_id``, ``id``)
    of those answered before ``deadline``."""

    def one(rid: str) -> dict[str, Any] | None:
        try:
            return {**get_retrying(port, f"/track?id={rid}", deadline), "id": rid}
        except Exception:
            return None

    with ThreadPoolExecutor(8) as pool:
        answers = pool.map(one, [uuid.uuid4().hex for _ in range(n)])
        return [a for a in answers if a is not None]


def workers_answering(port: int, want: int, timeout: float) -> tuple[set[int], list[str]]:
    """Tracking requests until ``want`` distinct worker pids answered or ``timeout``
    passed; the pids seen and the request ids answered."""
    pids: set[int] = set()
    answered: list[str] = []
    deadline = time.monotonic() + timeout
    while len(pids) < want and time.monotonic() < deadline:
        for answer in track_concurrently(port, 8, deadline):
            pids.add(answer["pid"])
            answered.append(answer["id"])
    return pids, answered


def wait_requests_ended(log_path: Path, request_ids: list[str], timeout: float = 30) -> None:
    """Wait until uWSGI logged every request in ``request_ids``: it logs a request once it
    has ended, so no worker is inside one of them any more."""
    deadline = time.monotonic() + timeout
    while True:
        logged = log_path.read_text(errors="replace")
        left = [rid for rid in request_ids if f"/track?id={rid} " not in logged]
        if not left:
            return
        assert time.monotonic() < deadline, f"uWSGI never logged {left[:3]}"
        time.sleep(0.02)


def arrived(px: FakePX, name: str) -> Counter[str]:
    return Counter(e["eventId"] for e in px.events if e["eventName"] == name)


def requests_arrived(px: FakePX) -> Counter[str]:
    return Counter(
        e["attributes"]["request_id"] for e in px.events if e["eventName"] == "http_request"
    )


class TestMasterTracksAtImport:
    LAUNCHES = 10

    @pytest.mark.parametrize(
        "options",
        [
            pytest.param(("--master", "--enable-threads"), id="master-threads"),
            pytest.param(("--master",), id="master"),
            pytest.param(("--master", "--enable-threads", "--lazy-apps"), id="lazy-apps"),
            pytest.param(("--enable-threads",), id="no-master"),
        ],
    )
    def test_every_worker_answers_and_every_event_arrives_once(
        self, tmp_path: Path, options: tuple[str, ...]
    ) -> None:
        launches = self.LAUNCHES if options == ("--master", "--enable-threads") else 3
        log_path = tmp_path / "uwsgi.log"
        answering: list[int] = []
        boots: list[int] = []
        with FakePX() as px:
            for _ in range(launches):
                px.clear()
                # Without --lazy-apps the master tracked app_boot once, and one worker sent
                # it; with --lazy-apps every worker loads the app (and tracks it) itself.
                boots_expected = 4 if "--lazy-apps" in options else 1
                with uwsgi(px, log_path, *options) as (proc, port):
                    pids, answered = workers_answering(port, 4, timeout=30)
                    answering.append(len(pids))
                    want = len(answered) + boots_expected
                    # Before the stop: the master's event was sent by a worker, not at exit.
                    sent_boot = px.wait_for(want, timeout=10)
                    # A brutal stop skips the exit hooks of a worker inside a request (see
                    # GRACEFUL_SIGTERM, tested below): stop between requests here.
                    wait_requests_ended(log_path, answered)
                # Without a master, uWSGI's first worker exits 30 on SIGTERM.
                assert proc.returncode in (0, 30), log_path.read_text()[-3000:]
                assert sent_boot or options == ("--master", "--enable-threads", "--lazy-apps")
                assert px.wait_for(want, timeout=10)
                seen = requests_arrived(px)
                assert seen == Counter(answered), f"requests arrived {seen} != answered"
                boots.append(sum(arrived(px, "app_boot").values()))
        logs = log_path.read_text()
        assert answering == [4] * launches, f"workers answering per launch: {answering}"
        assert boots == [boots_expected] * launches, f"app_boot arrivals per launch: {boots}"
        assert "Traceback" not in logs, logs[-3000:]
        assert "k-uwsgi" not in logs
        # uWSGI 2.0.27+ runs Python with threads whatever the options: no error about it.
        assert "uWSGI runs without --enable-threads" not in logs


class TestRecycledWorkers:
    REQUESTS = 100

    def test_max_requests_every_event_once_with_distinct_ids(self, tmp_path: Path) -> None:
        """Issue 16: uWSGI forks from C, so a generator reseeded only by fork hooks gave
        every recycled worker the same eventIds. 0.1 s answers and one sender thread per
        worker: a worker recycled after 5 requests still holds events, which only its
        exit flush can send."""
        log_path = tmp_path / "uwsgi.log"
        options = ("--master", "--max-requests", "5", "--min-worker-lifetime", "0")
        with FakePX(latency=0.1) as px:
            with uwsgi(px, log_path, *options, PX_WORKERS="1") as (proc, port):
                deadline = time.monotonic() + 60
                ids = [uuid.uuid4().hex for _ in range(self.REQUESTS)]
                answers: dict[str, dict[str, Any]] = {}
                for rid in ids:  # one at a time: workers recycle in between
                    answers[rid] = get_retrying(port, f"/track?id={rid}", deadline)
                assert px.wait_for(self.REQUESTS + 1, timeout=60)
            logs = log_path.read_text()
            time.sleep(0.3)  # anything sent twice would have arrived by now
            events = px.events
        assert proc.returncode == 0, logs[-3000:]
        served_by = Counter(a["pid"] for a in answers.values())
        assert len(served_by) > 4, f"workers were not recycled: {served_by}"
        assert "respawned" in logs.lower() or "Respawned" in logs
        assert requests_arrived(px) == Counter(ids)
        event_ids = Counter(e["eventId"] for e in events)
        assert len(event_ids) == self.REQUESTS + 1, f"repeated eventIds: {event_ids.most_common(3)}"
        assert set(event_ids.values()) == {1}
        assert Counter(a["event_id"] for a in answers.values()) == arrived(px, "http_request")
        assert sum(arrived(px, "app_boot").values()) == 1

    def test_what_workers_hold_is_sent_when_the_server_stops(self, tmp_path: Path) -> None:
        log_path = tmp_path / "uwsgi.log"
        with FakePX(latency=0.1) as px:
            with uwsgi(px, log_path, "--master", PX_WORKERS="1") as (proc, port):
                pids, answered = workers_answering(port, 4, timeout=30)
                assert len(pids) == 4
                # 32 more: at 10 per second per worker, most wait in the workers' queues.
                more = track_concurrently(port, 32, time.monotonic() + 30)
                answered += [a["id"] for a in more]
                wait_requests_ended(log_path, answered)
                stop_at = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
            logs = log_path.read_text()
            time.sleep(0.3)
            after_stop = sum(r.arrived_at > stop_at for r in px.requests)
        assert proc.returncode == 0, logs[-3000:]
        assert after_stop > 0, "nothing was left for the exit flush: the test proves nothing"
        assert requests_arrived(px) == Counter(answered), logs[-3000:]
        assert sum(arrived(px, "app_boot").values()) == 1

    def test_a_graceful_sigterm_sends_what_requests_in_flight_tracked(self, tmp_path: Path) -> None:
        """With uWSGI's graceful SIGTERM (the README's advice), a worker finishes the request
        it is serving and runs its exit flush: SIGTERM arrives while requests are being
        served, and every event of every answered request arrives."""
        log_path = tmp_path / "uwsgi.log"
        with FakePX(latency=0.05) as px:
            with uwsgi(px, log_path, "--master", *GRACEFUL_SIGTERM, PX_WORKERS="1") as (
                proc,
                port,
            ):
                pids, answered = workers_answering(port, 4, timeout=30)
                assert len(pids) == 4
                with ThreadPoolExecutor(1) as pool:
                    load = pool.submit(track_concurrently, port, 64, time.monotonic() + 5)
                    assert wait_until(lambda: logged_count(log_path) >= len(answered) + 8)
                    stop_at = time.monotonic()
                    proc.send_signal(signal.SIGTERM)
                    more = load.result()
                    proc.wait(timeout=60)
                answered += [a["id"] for a in more]
            logs = log_path.read_text()
            time.sleep(0.3)
            after_stop = sum(r.arrived_at > stop_at for r in px.requests)
        assert proc.returncode == 0, logs[-3000:]
        assert "graceful shutdown" in logs, logs[-3000:]
        assert after_stop > 0, "nothing was left for the exit flush: the test proves nothing"
        assert requests_arrived(px) == Counter(answered), logs[-3000:]


def logged_count(log_path: Path) -> int:
    return log_path.read_text(errors="replace").count("GET /track?id=")


class TestWithoutThreads:
    """uWSGI 2.0.27 and later always initialise Python threads (``--enable-threads`` is
    a no-op there), so the real server tested above cannot run Python without them. An
    older one could: a stand-in ``uwsgi`` module (what uWSGI puts in ``sys.modules``, as
    a worker of such a server would show it) takes its place, in a child process."""

    CHILD = (
        PRELUDE
        + """
import logging, types
logging.basicConfig(level=logging.ERROR, format="LOG %(levelname)s %(message)s")
module = types.ModuleType("uwsgi")
module.worker_id = lambda: 1  # a worker, not the master
module.mule_id = lambda: 0
shape = sys.argv[1]
if shape == "has_threads=0":
    module.has_threads = 0
elif shape == "has_threads=1":
    module.has_threads = 1
elif shape == "old, no option":
    module.opt = {}
elif shape == "old, --enable-threads":
    module.opt = {b"enable-threads": True, "enable-threads": True}
sys.modules["uwsgi"] = module
t = tracker_for(os.environ["PX_URL"])
t.track("u", "in_a_worker")
t.track("u", "in_a_worker")
print(json.dumps({"flushed": t.flush(10), "delivered": t.stats().delivered}))
"""
    )

    @pytest.mark.parametrize(
        ("shape", "error"),
        [
            ("has_threads=0", True),
            ("old, no option", True),
            ("has_threads=1", False),
            ("old, --enable-threads", False),
        ],
    )
    def test_one_error_names_the_option_and_the_events_still_arrive(
        self, fake_px: FakePX, shape: str, error: bool
    ) -> None:
        done, _ = run_code(
            self.CHILD.replace("sys.argv[1]", repr(shape)), env={"PX_URL": fake_px.url}
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"flushed": True, "delivered": 2}
        errors = [line for line in done.stderr.splitlines() if line.startswith("LOG ERROR")]
        if error:
            assert len(errors) == 1, done.stderr  # once, not per event
            assert "--enable-threads" in errors[0]
        else:
            assert errors == [], done.stderr
        assert fake_px.wait_for(2)

    @pytest.mark.skipif(
        not UWSGI_OLD.exists(),
        reason=f"uWSGI 2.0.26 is not installed at {UWSGI_OLD} (.ci/run installs it)",
    )
    def test_under_a_real_uwsgi_without_threads(self, tmp_path: Path) -> None:
        """uWSGI 2.0.26 without --enable-threads: the GIL stays with uWSGI between
        requests, so senders only run while a request does; the error names the option,
        and every event arrives by the time the workers leave."""
        log_path = tmp_path / "uwsgi.log"
        with FakePX() as px:
            options = ("--master", "--virtualenv", sys.prefix)  # with this venv's packages
            with uwsgi(px, log_path, *options, binary=str(UWSGI_OLD)) as (proc, port):
                pids, answered = workers_answering(port, 4, timeout=30)
                wait_requests_ended(log_path, answered)
            logs = log_path.read_text()
            assert proc.returncode == 0, logs[-3000:]
            assert "Python threads support is disabled" in logs  # uWSGI's own word for it
            assert px.wait_for(len(answered) + 1, timeout=10), logs[-3000:]
            assert requests_arrived(px) == Counter(answered)
            assert sum(arrived(px, "app_boot").values()) == 1
        assert len(pids) == 4
        # One error per worker that sent (each is a process of its own), naming the option.
        errors = logs.count("uWSGI runs without --enable-threads")
        assert 1 <= errors <= 4, logs[-3000:]
        assert "Traceback" not in logs, logs[-3000:]
