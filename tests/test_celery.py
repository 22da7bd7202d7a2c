"""Under a real Celery worker (issue 14 item 2): events tracked in tasks arrive, each once,
when a prefork child is recycled (``--max-tasks-per-child``) and when the worker is
stopped with SIGTERM (warm shutdown); the thread and solo pools too.

tests/apps/celery_tasks.py is the tasks module, as a user writes it: the tracker is
configured at import and nothing else (no signal handler, no flush). Prefork children
leave through ``os._exit()`` from inside billiard's worker loop, which runs no atexit hook
and no finalizer: only the tracker's own hook on ``worker_process_shutdown`` can send
what they hold. The broker is Celery's filesystem transport in the test's tmp_path (no
server); the test process queues the tasks before the worker starts.

To prove that what arrives was sent by the exit hook and not by the senders in the
background (Celery waits seconds between SIGTERM and stopping its pool), PX is held
until the first process of the worker starts to leave; the tasks module notes that
moment in a file, for the test only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tracker.testing import FakePX

from ._support import APPS, clean_env, kill_group, stop_group, wait_until

pytest.importorskip("celery", reason="Celery is not installed (the dev extra has it)")
pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parent.parent


def lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def send_tasks(folder: Path, n: int) -> None:
    """Queue ``n`` tasks in the filesystem broker, from this process."""
    from tests.apps.celery_broker import make_app  # noqa: PLC0415  (Celery only here)

    app = make_app(folder)
    try:
        for i in range(n):
            app.send_task("px.track_one", args=(i,))
    finally:
        app.close()


@contextlib.contextmanager
def celery_worker(
    px: FakePX, folder: Path, *options: str, **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """A Celery worker running tests/apps/celery_tasks.py; stopped with SIGTERM (and
    waited for) on the way out if the test did not stop it, and no child left behind."""
    environment = clean_env(
        PX_TEST_BASE_URL=px.url,
        PX_TEST_BROKER_DIR=str(folder),
        PYTHONPATH=os.pathsep.join([str(APPS), str(ROOT)]),
        **env,
    )
    command = [sys.executable, "-m", "celery", "-A", "celery_tasks", "worker"]
    quiet = ["--loglevel", "INFO", "--without-heartbeat", "--without-gossip", "--without-mingle"]
    with (folder / "worker.log").open("ab") as log:
        proc = subprocess.Popen(
            [*command, *quiet, "--hostname", "px-test@localhost", *options],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=folder,
            start_new_session=True,  # its own process group, for kill_group()
        )
    try:
        yield proc
    finally:
        stop_group(proc)


def wait_tracked(folder: Path, n: int, worker: subprocess.Popen[bytes]) -> list[str]:
    """The ids of the events the tasks tracked, once ``n`` tasks ran."""
    wait_until(lambda: len(lines(folder / "tracked")) >= n or worker.poll() is not None, 120)
    tracked = lines(folder / "tracked")
    assert len(tracked) == n, f"{len(tracked)} of {n} tasks ran\n{log_of(folder)}"
    assert "None" not in tracked
    return tracked


def released_when_leaving(worker: subprocess.Popen[bytes], px: FakePX, folder: Path) -> float:
    """After SIGTERM (a warm shutdown): PX is released once a process of the worker starts
    to leave, and the worker ends; the moment of the release (monotonic)."""
    leaving = wait_until(lambda: lines(folder / "exits"), 60)
    leaving_at = time.monotonic()
    px.release()
    assert leaving, f"no process of the worker left\n{log_of(folder)}"
    worker.wait(60)
    assert worker.returncode == 0, log_of(folder)
    return leaving_at


def log_of(folder: Path) -> str:
    return (folder / "worker.log").read_text(errors="replace")[-5000:]


def assert_arrived_once(px: FakePX, tracked: list[str], folder: Path) -> None:
    assert px.wait_for(len(tracked), timeout=15), log_of(folder)
    time.sleep(0.3)  # anything sent twice would arrive about now
    assert Counter(px.event_ids()) == Counter(tracked), log_of(folder)


class TestPrefork:
    def test_children_recycled_after_each_task_send_every_event_once(self, tmp_path: Path) -> None:
        # The tracker configured before Celery is imported: its hook joins in each child.
        with FakePX() as px:
            send_tasks(tmp_path, 50)
            options = ("--pool", "prefork", "--concurrency", "4", "--max-tasks-per-child", "1")
            with celery_worker(px, tmp_path, *options, PX_TEST_TRACKER_FIRST="1") as worker:
                tracked = wait_tracked(tmp_path, 50, worker)
                # Sent by each child as it was recycled: no stop needed.
                assert px.wait_for(50, timeout=30), log_of(tmp_path)
                assert_arrived_once(px, tracked, tmp_path)
                # Seen what it needed: Celery's warm shutdown takes seconds with this broker.
                kill_group(worker)
            pids = Counter(event["attributes"]["pid"] for event in px.events)
            assert len(pids) == 50, f"a child ran more than one task: {pids}"

    def test_what_children_hold_when_the_worker_is_stopped_arrives(self, tmp_path: Path) -> None:
        # Long-lived children, one sender each, PX held: what they tracked is still
        # queued when SIGTERM comes, and only their exit hook can send it (billiard's
        # children linger 1 s before os._exit: one of them has 8 answers or more to wait
        # for, 2.4 s; however Celery spread the tasks, exit_timeout covers all 16).
        with FakePX(latency=0.3) as px:
            px.hold()
            send_tasks(tmp_path, 16)
            options = ("--pool", "prefork", "--concurrency", "2")
            env = {"PX_TEST_SENDERS": "1", "PX_TEST_EXIT_TIMEOUT": "15"}
            with celery_worker(px, tmp_path, *options, **env) as worker:
                tracked = wait_tracked(tmp_path, 16, worker)
                worker.send_signal(signal.SIGTERM)
                leaving_at = released_when_leaving(worker, px, tmp_path)
            assert_arrived_once(px, tracked, tmp_path)
            late = sum(r.arrived_at > leaving_at for r in px.requests)
            # All but the one request per child that was in flight when PX was held.
            assert late >= len(tracked) - 2, f"{late} of {len(tracked)} sent at exit"
            senders = {event["attributes"]["pid"] for event in px.events}
            assert worker.pid not in senders, "the tasks ran in the worker's main process"


class TestWorkerProcessPools:
    def test_events_tracked_in_tasks_arrive_when_the_worker_stops(self, tmp_path: Path) -> None:
        # Tasks run in the worker's main process, which leaves through atexit. One worker
        # per pool, both at once: they spend their time waiting on Celery's shutdown.
        pools = ("threads", "solo")
        folders = {pool: tmp_path / pool for pool in pools}
        with contextlib.ExitStack() as stack:
            pxs = {pool: stack.enter_context(FakePX(latency=0.05)) for pool in pools}
            workers = {}
            for pool in pools:
                pxs[pool].hold()
                send_tasks(folders[pool], 6)
                options = ("--pool", pool, "--concurrency", "2")
                workers[pool] = stack.enter_context(
                    celery_worker(pxs[pool], folders[pool], *options, PX_TEST_SENDERS="1")
                )
            tracked = {pool: wait_tracked(folders[pool], 6, workers[pool]) for pool in pools}
            for worker in workers.values():
                worker.send_signal(signal.SIGTERM)
            for pool in pools:
                px, folder, worker = pxs[pool], folders[pool], workers[pool]
                leaving_at = released_when_leaving(worker, px, folder)
                assert_arrived_once(px, tracked[pool], folder)
                assert {event["attributes"]["pid"] for event in px.events} == {worker.pid}
                late = sum(r.arrived_at > leaving_at for r in px.requests)
                assert late >= 6 - 1, f"{pool}: {late} of 6 sent at exit"
