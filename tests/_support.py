"""What many test files need, written once: keys, fast retries, polling, events and
trackers for unit, spool and recorder tests, the counters' invariant, child processes,
their environment and process groups, and a gunicorn run."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from tracker import CustomEvent, DeliveryError, Stats, Tracker
from tracker.testing import FakePX

API_KEY = "test-key-0001"
PRODUCT_KEY = "AP-TEST-1"
APPS = Path(__file__).parent / "apps"

# Fast retries for tests that are not about the backoff schedule itself.
FAST_RETRY: dict[str, Any] = {"backoff_base": 0.01, "backoff_max": 0.05}


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds passed; never sleeps long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return bool(predicate())


class Recorder:
    """An ``on_error`` (the instance itself, or ``.on_error``) and ``on_success`` recorder,
    safe to call from any thread; it notes the thread each call ran on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.failures: list[tuple[str, DeliveryError, str]] = []  # (event id, error, thread)
        self.events: list[tuple[CustomEvent, DeliveryError]] = []
        self.delivered: list[str] = []

    def on_error(self, event: CustomEvent, error: DeliveryError) -> None:
        with self.lock:
            self.failures.append((event.event_id, error, threading.current_thread().name))
            self.events.append((event, error))

    __call__ = on_error

    def on_success(self, event: CustomEvent) -> None:
        with self.lock:
            self.delivered.append(event.event_id)

    @property
    def errors(self) -> list[DeliveryError]:
        with self.lock:
            return [error for _, error, _ in self.failures]

    def reasons(self) -> list[str]:
        return [error.reason for error in self.errors]

    def ids(self) -> list[str]:
        with self.lock:
            return [event_id for event_id, _, _ in self.failures]


def unit_event(n: int = 1) -> CustomEvent:
    """A valid event numbered ``n`` (identify_id ``u<n>``, event_id ``id-<n>``), as track()
    hands it on, for unit tests that play the pipeline's parts by hand."""
    return CustomEvent(
        identify_id=f"u{n}",
        event_name="e",
        property_key="AP-1",
        date=1_700_000_000_000,
        event_id=f"id-{n}",
    )


def invariant_holds(s: Any) -> bool:
    """Every tracked (or recovered from a spool) event is delivered, failed, dropped or
    pending, and the reasons add up."""
    return bool(
        s.tracked + s.recovered == s.delivered + s.failed + s.dropped + s.pending
        and s.failed == sum(s.failed_by_reason.values())
        and s.dropped == sum(s.dropped_by_reason.values())
    )


class InvariantSampler:
    """Samples ``stats()`` from its own thread until stopped; keeps only counts and the
    first few snapshots that broke the invariant (so it allocates nothing per sample)."""

    def __init__(self, tracker: Tracker, pause: float = 0.001) -> None:
        self._tracker = tracker
        self._pause = pause
        self._stop = threading.Event()
        self.samples = 0
        self.broken: list[Stats] = []
        self._thread = threading.Thread(target=self._run, name="invariant-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            s = self._tracker.stats()
            self.samples += 1
            if not invariant_holds(s) and len(self.broken) < 10:
                self.broken.append(s)
            time.sleep(self._pause)

    def __enter__(self) -> InvariantSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


# Long variants run with PX_SLOW=1 (or -m slow: tests/conftest.py removes every other PX_*
# variable from the environment before the test modules are imported).
SLOW = [
    pytest.mark.slow,
    pytest.mark.skipif(
        "not (os.environ.get('PX_SLOW') or 'slow' in config.getoption('markexpr'))",
        reason="long variant: PX_SLOW=1 or -m slow",
    ),
    pytest.mark.timeout(1800),
]

_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child: no PX_* settings or proxies leaking in from the
    developer's."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PX_") and k.lower() not in _PROXY_VARS
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_code(
    code: str, env: dict[str, str] | None = None, timeout: float = 60
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``code`` in a fresh interpreter; what it printed and how long it took."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(**(env or {})),
        check=False,
    )
    return done, time.monotonic() - started


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL to a process started in a session of its own (``start_new_session=True``)
    and to every process of its group; waits for the process."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(60)


def stop_group(proc: subprocess.Popen[Any], timeout: float = 60) -> None:
    """Stop a process started in a session of its own and whatever is left of its group:
    SIGTERM to the process, waited for up to ``timeout`` seconds (SIGKILL after); then
    SIGTERM to the rest of the group, SIGKILL after a grace period (a worker that is not
    the process's child, as uWSGI's without --master, outlives it otherwise)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


# The start of a child's code: ``tracker_for(url, **options)`` builds a Tracker.
PRELUDE = f"""
import os, sys, json, time
from tracker import Tracker
def tracker_for(url, **options):
    options.setdefault("product_key", {PRODUCT_KEY!r})
    return Tracker({API_KEY!r}, base_url=url, **options)
"""


def import_time() -> float:
    """How long a child takes to start and import the package (subtracted from timings)."""
    _, elapsed = run_code("import tracker")
    return elapsed


def run_app(*args: object, timeout: float = 60) -> tuple[list[dict[str, Any]], float, str]:
    """Run tests/apps/px_child.py; its JSON lines, the wall-clock time it exited at, its
    stderr."""
    proc = subprocess.run(
        [sys.executable, str(APPS / "px_child.py"), *map(str, args)],
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
    """The one JSON line of ``kind`` a child wrote."""
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


def arrived_ids(px: FakePX) -> Counter[str]:
    return Counter(px.event_ids())


def held_tracker(px: FakePX, make_tracker: Callable[..., Tracker], **options: Any) -> Tracker:
    """A tracker with one worker stuck in a request the server holds, so that what is
    tracked next stays queued."""
    px.hold()
    options.setdefault("workers", 1)
    tracker = make_tracker(px.url, **options)
    tracker.track("first", "in-flight")
    assert wait_until(lambda: px.in_progress == 1)
    return tracker


def recorded_tracker(url: str, recorder: Recorder, key: str = API_KEY, **options: Any) -> Tracker:
    """One sender thread whose outcomes ``recorder`` collects, and no exit flush."""
    options.setdefault("workers", 1)
    return Tracker(
        key,
        product_key=PRODUCT_KEY,
        base_url=url,
        on_error=recorder.on_error,
        on_success=recorder.on_success,
        flush_at_exit=False,
        **options,
    )


def spool_tracker(url: str, directory: Path, **options: Any) -> Tracker:
    """A Tracker keeping its events in the spool ``directory``, with no exit flush
    (API_KEY and PRODUCT_KEY unless given)."""
    options.setdefault("api_key", API_KEY)
    options.setdefault("product_key", PRODUCT_KEY)
    return Tracker(base_url=url, spool=str(directory), flush_at_exit=False, **options)


def get_json(port: int, path: str, timeout: float = 30) -> dict[str, Any]:
    """GET ``path`` from a test server on 127.0.0.1; its JSON answer (asserting a 200)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (response.status, body)
        return dict(json.loads(body))
    finally:
        conn.close()


@dataclass
class GunicornRun:
    """What one run of gunicorn serving tests/apps/px_wsgi_app.py left."""

    pid: int  # the master's: app_boot is tracked there, at import (--preload)
    returncode: int | None
    request_ids: list[str]
    answers: list[dict[str, Any]]  # each request's answer: the worker's pid and event_id
    events: list[dict[str, Any]]  # what PX accepted
    logs: str
    sent_after_sigterm: int  # requests PX received after the SIGTERM
    stopped_in: float  # seconds from the SIGTERM to the master's exit


def run_gunicorn(
    px: FakePX, tmp_path: Path, *options: str, workers: int, requests: int, api_key: str
) -> GunicornRun:
    """``gunicorn --preload`` with ``workers`` workers (``options`` choose their kind)
    serving tests/apps/px_wsgi_app.py, one sender thread per process: once every worker is
    ready, ``requests`` tracking requests, 6 at a time, then a graceful SIGTERM, waited for."""
    log_path = tmp_path / "gunicorn.log"
    port = free_port()
    env = clean_env(PX_TEST_BASE_URL=px.url, PX_TEST_API_KEY=api_key, PX_WORKERS="1")
    command = [sys.executable, "-m", "gunicorn", "--preload", *options, "-w", str(workers)]
    command += ["-b", f"127.0.0.1:{port}", "--chdir", str(APPS)]
    command += ["-c", str(APPS / "gunicorn_ready.py"), "--graceful-timeout", "30"]
    command += ["--log-level", "info", "px_wsgi_app:app"]
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a hung server is killed with its workers
        )
        try:
            _wait_until_ready(port, proc, log_path, workers)
            request_ids = [uuid.uuid4().hex for _ in range(requests)]
            with ThreadPoolExecutor(6) as pool:
                answers = list(
                    pool.map(lambda rid: get_json(port, f"/track?id={rid}"), request_ids)
                )
            sigterm_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            stopped_in = time.monotonic() - sigterm_at
        finally:
            if proc.poll() is None:
                kill_group(proc)
    time.sleep(0.3)  # anything sent twice would arrive about now
    return GunicornRun(
        pid=proc.pid,
        returncode=proc.returncode,
        request_ids=request_ids,
        answers=answers,
        events=px.events,
        logs=log_path.read_text(),
        sent_after_sigterm=sum(r.arrived_at > sigterm_at for r in px.requests),
        stopped_in=stopped_in,
    )


def _wait_until_ready(
    port: int, proc: subprocess.Popen[bytes], log_path: Path, workers: int
) -> None:
    """Until every worker has finished booting (tests/apps/gunicorn_ready.py) and one answers."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"gunicorn exited with {proc.returncode}:\n{log_path.read_text()}")
        if log_path.read_text().count("Worker ready") >= workers:
            try:
                get_json(port, "/health")
                return
            except OSError:
                pass
        time.sleep(0.1)
    pytest.fail(f"gunicorn's workers were not all ready within 30s:\n{log_path.read_text()}")


def assert_each_request_arrived_once(run: GunicornRun) -> None:
    """The server exited cleanly; every request's event arrived exactly once, with the
    eventId its answer gave, and the master's app_boot once, some of them sent by the
    workers' exit flush after the SIGTERM; nothing else arrived."""
    assert run.returncode == 0, run.logs
    assert all(a["event_id"] for a in run.answers), run.answers
    assert run.sent_after_sigterm > 0, "nothing was left for the workers' exit flush to send"
    requests_seen = Counter(
        e["attributes"]["request_id"] for e in run.events if e["eventName"] == "http_request"
    )
    missing = set(run.request_ids) - set(requests_seen)
    duplicated = {rid: n for rid, n in requests_seen.items() if n > 1}
    unexpected = set(requests_seen) - set(run.request_ids)
    report = f"missing={sorted(missing)} duplicated={duplicated} unexpected={unexpected}"
    assert requests_seen == Counter(run.request_ids), f"{report}\n{run.logs}"
    sent_ids = Counter(e["eventId"] for e in run.events if e["eventName"] == "http_request")
    assert sent_ids == Counter(a["event_id"] for a in run.answers)
    boots = [e for e in run.events if e["eventName"] == "app_boot"]
    assert len(boots) == 1, f"app_boot arrived {len(boots)} times: {boots}\n{run.logs}"
    assert boots[0]["attributes"]["pid"] == run.pid
    assert len(run.events) == len(run.request_ids) + 1
