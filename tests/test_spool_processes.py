"""The spool across processes: kill -9 at random moments, a live sibling, a full disk, RSS.

Children (tests/apps/spool_child.py) print a line after each ``track()`` returned and one
per delivery, and name themselves in their requests' User-Agent; what FakePX received is
the ground truth. A sibling that must stay alive without sending is
SIGSTOPped: it holds its lock and its events, and FakePX accepts its events from then on,
so any of them arriving would have been sent by another process.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import pytest

from tracker import Tracker
from tracker.testing import FakePX, px_error

from ._support import SLOW, clean_env, spool_tracker

CHILD = Path(__file__).parent / "apps" / "spool_child.py"
ROOT = Path(__file__).parent.parent
API_KEY = "k-spool-child"  # the key tests/apps/spool_child.py uses
PRODUCT_KEY = "AP-SPOOL-1"


class GatedPX(FakePX):
    """FakePX answering 500 to every event whose identifyId starts with a held prefix."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.held: tuple[bytes, ...] = ()

    def _decide(
        self, method: str, path: str, headers: Any, raw: bytes, now: float
    ) -> tuple[Optional[int], dict[str, str], Any, float]:
        for prefix in self.held:
            if b'"identifyId":"' + prefix in raw:
                return 500, {}, px_error(500, "held by the test"), self.latency
        return super()._decide(method, path, headers, raw, now)


class Child:
    """A spool_child.py process whose stdout lines are collected by a thread."""

    def __init__(self, *args: str) -> None:
        env = clean_env(PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.stderr = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, predicate: Any, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if predicate(line):
                    return line
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.005)
        raise AssertionError(f"no such line; stderr: {self.stderr_now()}")

    def stats(self, index: int = 0) -> dict[str, Any]:
        """The stats line number ``index`` (-1: the last one, once the child ended)."""
        deadline = time.monotonic() + 60
        while True:
            found = [json.loads(line) for line in list(self.lines) if line.startswith("{")]
            if len(found) > index >= 0 or (index < 0 and found and self.proc.poll() is not None):
                return dict(found[index])
            if time.monotonic() > deadline or (
                self.proc.poll() is not None and not self._reader.is_alive()
            ):
                raise AssertionError(f"no stats line {index}: {self.lines[-5:]}")
            time.sleep(0.005)

    def tracked(self) -> list[tuple[str, float]]:
        pairs = []
        for line in self.lines:
            if line.startswith("T "):
                _, event_id, at = line.split()
                pairs.append((event_id, float(at)))
        return pairs

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def kill(self) -> float:
        self.proc.send_signal(signal.SIGKILL)
        at = time.monotonic()
        self.finish()
        return at

    def finish(self, timeout: float = 60.0) -> None:
        try:
            self.proc.wait(timeout)
        finally:
            self._reader.join(10)
            assert self.proc.stderr is not None
            self.stderr = self.proc.stderr.read()
            for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()

    def stderr_now(self) -> str:
        return self.stderr if self.proc.poll() is not None else "(running)"


def drain(directory: Path, url: str) -> Tracker:
    t = spool_tracker(url, directory, api_key=API_KEY, product_key=PRODUCT_KEY, rate_limit=None)
    assert t.flush(timeout=60)
    t.shutdown(timeout=5)
    return t


def received(px: FakePX) -> Counter[str]:
    return Counter(e["eventId"] for e in px.events)


def senders(px: FakePX) -> dict[str, list[str]]:
    """For each eventId PX accepted, the pid of each process that sent it an accepted
    request ("" for the test's own trackers): spool_child.py tags its User-Agent."""
    found: dict[str, list[str]] = {}
    for r in px.requests:
        if r.status is not None and 200 <= r.status < 300 and isinstance(r.body, dict):
            _, tag, pid = r.headers.get("User-Agent", "").rpartition(" spool-child/")
            found.setdefault(r.body["eventId"], []).append(pid if tag else "")
    return found


def committed_deletions(lines: list[str]) -> set[str]:
    """The events whose deletion a spool_child.py "track" process (spool_interval=0)
    committed before it printed its last line. Its "D" line is written after the event's
    deletion was queued; with spool_interval=0 a track() returns once everything queued
    before it is committed. So a "D" line followed by two "T" lines (the track() of the
    second began after the "D" line was written) was committed: no clock involved."""
    seen_after: dict[str, int] = {}
    committed: set[str] = set()
    for line in lines:
        if line.startswith("D "):
            seen_after[line.split()[1]] = 0
        elif line.startswith("T "):
            for event_id in list(seen_after):
                seen_after[event_id] += 1
                if seen_after[event_id] == 2:
                    committed.add(event_id)
                    del seen_after[event_id]
    return committed


def start_stopped_sibling(px: GatedPX, directory: Path, count: int) -> Child:
    """A live process with ``count`` unsent events on disk in ``directory``, stopped."""
    px.held = (b"sib-",)
    sibling = Child("track", str(directory), px.url, "sib", str(count), "0", "0")
    sibling.wait_line(lambda line: line == "done")
    sibling.proc.send_signal(signal.SIGSTOP)
    time.sleep(0.3)  # a request it wrote before stopping is answered (500) by now
    px.held = ()
    return sibling


def kill_loop(rounds: int, interval: float, tmp_path: Path) -> None:
    rng = random.Random(13)
    directory = tmp_path / "spool"
    # Slow answers keep a backlog on disk at every kill, so each restart adopts some.
    with GatedPX(latency=0.01) as px:
        sibling = start_stopped_sibling(px, directory, 20)
        try:
            returned: list[tuple[str, float]] = []
            killed: dict[str, int] = {}  # pid -> round
            committed: list[set[str]] = []  # per round
            for n in range(rounds):
                # ~1000 events a second at most, killed within the first ~400.
                child = Child(
                    "track", str(directory), px.url, f"k{n}", "2000", str(interval), "0.001"
                )
                stats = child.stats()
                if n:
                    assert stats["recovered"] > 0, f"round {n} adopted nothing"
                child.wait_line(lambda line: line.startswith("T "))
                time.sleep(rng.uniform(0.05, 0.4) if interval == 0 else rng.uniform(0.5, 1.0))
                kill_at = child.kill()
                killed[str(child.proc.pid)] = n
                committed.append(committed_deletions(child.lines))
                tracked = child.tracked()
                assert tracked, child.stderr
                returned.extend((event_id, at - kill_at) for event_id, at in tracked)
            final = drain(directory, px.url)
            s = final.stats()
            assert s.recovered > 0
            assert s.recovered == s.delivered
            got = received(px)
            assert not [e for e in px.events if e["identifyId"].startswith("sib-")]
            if interval == 0:
                lost = [event_id for event_id, _ in returned if event_id not in got]
                assert lost == []
            else:
                # Lost at most what was tracked within the last interval before the kill
                # (plus a generous allowance for a busy machine's scheduling).
                slack = interval + 1.0
                lost_early = [
                    (event_id, age)
                    for event_id, age in returned
                    if event_id not in got and age < -slack
                ]
                assert lost_early == []
            # Duplicates only come from kills: no process had an event accepted twice,
            # and every process but the last one to send it was a killed child, killed
            # before the event's deletion committed (with spool_interval=0 its output
            # tells, without a clock; with an interval, when it commits is a matter of
            # time). Who sent each request is in its User-Agent, not in when it came.
            for event_id, pids in senders(px).items():
                if len(pids) > 1:
                    assert len(set(pids)) == len(pids), (event_id, pids)
                    assert all(pid in killed for pid in pids if pid), (event_id, pids)
                    if interval == 0:  # (the drain, "", sends after every child)
                        for n in sorted(killed.get(pid, rounds) for pid in pids)[:-1]:
                            assert event_id not in committed[n], (event_id, n, pids)
            assert sum(c - 1 for c in got.values()) <= rounds * 50
        finally:
            sibling.proc.send_signal(signal.SIGKILL)
            sibling.finish()
        # The sibling's events were on disk all along: once it is gone they are sent.
        drain(directory, px.url)
        assert sum(1 for e in px.events if e["identifyId"].startswith("sib-")) == 20
        assert sorted(p.name for p in directory.iterdir() if p.suffix == ".spool") == []


class TestKills:
    def test_kill_9_twenty_times_loses_nothing_track_returned(self, tmp_path: Path) -> None:
        kill_loop(20, 0.0, tmp_path)

    def test_kill_9_with_the_default_interval_loses_at_most_the_last_interval(
        self, tmp_path: Path
    ) -> None:
        kill_loop(4, 0.05, tmp_path)

    @pytest.mark.parametrize(
        "interval", [pytest.param(0.0, marks=SLOW), pytest.param(0.05, marks=SLOW)]
    )
    def test_kill_9_long(self, tmp_path: Path, interval: float) -> None:
        kill_loop(60, interval, tmp_path)


class TestSiblings:
    def test_a_live_process_never_sends_another_live_process_events(self, tmp_path: Path) -> None:
        directory = tmp_path / "spool"
        with GatedPX() as px:
            sibling = start_stopped_sibling(px, directory, 15)
            try:
                t = spool_tracker(px.url, directory, api_key=API_KEY, product_key=PRODUCT_KEY)
                assert t.stats().recovered == 0
                for i in range(10):
                    t.track(f"own-{i}", "e")
                assert t.flush(timeout=30)
                t.shutdown()
                assert sorted(e["identifyId"] for e in px.events) == sorted(
                    f"own-{i}" for i in range(10)
                )
            finally:
                sibling.proc.send_signal(signal.SIGKILL)
                sibling.finish()
            s = drain(directory, px.url).stats()
            assert s.recovered == 15
            assert s.delivered == 15
            assert sum(1 for e in px.events if e["identifyId"].startswith("sib-")) == 15


def fill_the_disk(px: GatedPX, tmp_path: Path, queue: int) -> tuple[Child, dict[str, Any]]:
    """A spool_child.py that tracks 3,000 events while PX refuses them, on a disk that
    takes 256 KB (RLIMIT_FSIZE), with max_queue_size=``queue``; then PX heals and it
    flushes and exits cleanly. The child and its last stats line."""
    px.held = (b"f-",)
    child = Child("fsize", str(tmp_path / "spool"), px.url, "3000", str(256 * 1024), str(queue))
    child.wait_line(lambda line: line == "done")
    px.held = ()
    child.send("flush")
    child.finish()
    assert child.proc.returncode == 0, child.stderr
    return child, child.stats(-1)


class TestBadDisks:
    def test_a_full_disk_keeps_events_in_memory_warns_once_and_delivers(
        self, tmp_path: Path
    ) -> None:
        with GatedPX() as px:
            child, s = fill_the_disk(px, tmp_path, queue=10_000)
            assert (s["tracked"], s["delivered"], s["dropped"], s["failed"]) == (3000, 3000, 0, 0)
            assert child.stderr.count("cannot write to") == 1, child.stderr
            assert "Traceback" not in child.stderr
            assert len({e["identifyId"] for e in px.events}) == 3000

    def test_a_disk_filling_up_while_events_wait_on_it_loses_none_uncounted(
        self, tmp_path: Path
    ) -> None:
        # max_queue_size=100: most events wait on disk when it fills up; those not yet
        # written join memory, and memory (bounded again) drops the rest, counted.
        with GatedPX() as px:
            child, s = fill_the_disk(px, tmp_path, queue=100)
            assert s["tracked"] == 3000
            assert s["failed"] == 0
            assert s["pending"] == 0
            assert s["delivered"] + s["dropped"] == 3000
            assert set(s["dropped_by_reason"]) <= {"queue_overflow"}
            assert s["delivered"] > 100
            assert child.stderr.count("cannot write to") == 1, child.stderr
            assert "Traceback" not in child.stderr
            assert len({e["identifyId"] for e in px.events}) == s["delivered"]


class TestOutage:
    def test_a_long_outage_keeps_memory_bounded_and_loses_nothing(self, tmp_path: Path) -> None:
        count = 8_000
        with GatedPX() as px:
            px.held = (b"r-",)
            growth = {}
            for spool in ("0", "1"):
                child = Child(
                    "rss",
                    str(tmp_path / f"spool{spool}"),
                    px.url,
                    str(count),
                    spool,
                    "200" if spool == "1" else str(count + 10),
                )
                child.finish(120)
                assert child.proc.returncode == 0, child.stderr
                growth[spool] = json.loads(child.lines[0])["growth"]
                if spool == "1":  # retried until delivered, however long the outage
                    s = child.stats(1)
                    assert (s["failed"], s["dropped"], s["pending"]) == (0, 0, count)
            # ~2.5 KB events: memory holds all 20 MB of them without a spool, a bounded
            # window with one.
            assert growth["0"] > 15_000_000
            assert growth["1"] < growth["0"] / 3, growth
            print("RSS growth", growth)
            px.held = ()
            s = drain(tmp_path / "spool1", px.url).stats()
            assert s.recovered == count
            assert s.delivered == count


class TestFork:
    def test_a_forked_child_has_its_own_file_and_never_sends_the_parents_events(
        self, tmp_path: Path
    ) -> None:
        directory = tmp_path / "spool"
        with GatedPX() as px:
            px.held = (b"p-",)
            proc = Child("fork", str(directory), px.url)
            child = proc.stats(0)
            parent = proc.stats(1)
            assert (child["tracked"], child["recovered"], child["delivered"]) == (3, 0, 3)
            assert (parent["tracked"], parent["pending"]) == (5, 5)
            px.held = ()
            proc.send("flush")
            proc.finish()
            assert proc.proc.returncode == 0, proc.stderr
            assert proc.stats(2)["delivered"] == 5
            got = received(px)
            assert sorted(e["identifyId"] for e in px.events) == sorted(
                [f"p-{i}" for i in range(5)] + [f"c-{i}" for i in range(3)]
            )
            assert max(got.values()) == 1
        assert [p for p in directory.iterdir() if p.suffix == ".spool"] == []
