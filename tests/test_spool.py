"""The durable spool in one process: what is on disk, recovery, bounds, outages, bad files."""

from __future__ import annotations

import gc
import logging
import os
import sqlite3
import stat
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from tracker import ConfigError, DeliveryError, Tracker
from tracker.testing import FakeClock, FakePX

from ._support import (
    API_KEY,
    FAST_RETRY,
    PRODUCT_KEY,
    InvariantSampler,
    invariant_holds,
    spool_tracker,
    wait_until,
)


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def make(make_tracker: Callable[..., Tracker]) -> Callable[..., Tracker]:
    """Unpaced trackers over a spool directory, shut down after the test."""

    def build(url: str, directory: Path, **options: Any) -> Tracker:
        options.setdefault("rate_limit", None)
        return make_tracker(url, spool=str(directory), **options)

    return build


def spool_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix == ".spool")


def rows_on_disk(directory: Path) -> int:
    total = 0
    for path in spool_files(directory):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            total += conn.execute("SELECT count(*) FROM events").fetchone()[0]
        finally:
            conn.close()
    return total


def leave_events(url: str, directory: Path, count: int, **options: Any) -> list[str]:
    """A tracker that tracks ``count`` events while PX fails and shuts down: they stay."""
    t = spool_tracker(url, directory, spool_interval=0, **options)
    ids = [t.track(f"u-{i}", "left", attributes={"i": i}) for i in range(count)]
    assert not t.shutdown(timeout=0)
    # A request in flight at shutdown still goes out (and would be answered by a PX the
    # caller heals next): wait for the senders to end.
    assert wait_until(lambda: not t._core.pool.alive(), 10)
    assert rows_on_disk(directory) == count
    return [i for i in ids if i is not None]


class TestOnDisk:
    def test_delivered_events_leave_an_empty_directory(
        self, fake_px: FakePX, spool_dir: Path, make: Any
    ) -> None:
        t = make(fake_px.url, spool_dir)
        ids = [t.track(f"u{i}", "e") for i in range(200)]
        assert t.flush(timeout=30)
        assert t.shutdown()
        assert sorted(e["eventId"] for e in fake_px.events) == sorted(ids)
        assert list(spool_dir.iterdir()) == []

    def test_interval_zero_commits_before_track_returns(
        self, fake_px: FakePX, spool_dir: Path, make: Any
    ) -> None:
        fake_px.fail_rate = 1.0
        t = make(fake_px.url, spool_dir, spool_interval=0, **FAST_RETRY)
        for i in range(5):
            t.track(f"u{i}", "e")
            assert rows_on_disk(spool_dir) == i + 1

    def test_default_interval_writes_within_the_interval(
        self, fake_px: FakePX, spool_dir: Path, make: Any
    ) -> None:
        fake_px.fail_rate = 1.0
        t = make(fake_px.url, spool_dir, **FAST_RETRY)
        for i in range(50):
            t.track(f"u{i}", "e")
        assert wait_until(lambda: rows_on_disk(spool_dir) == 50, 10)
        assert wait_until(lambda: t.stats().spooled == 50, 10)

    @pytest.mark.parametrize(("fsync", "level"), [(False, 1), (True, 2)])
    def test_spool_fsync_selects_synchronous_full(
        self, fake_px: FakePX, spool_dir: Path, make: Any, fsync: bool, level: int
    ) -> None:
        t = make(fake_px.url, spool_dir, spool_fsync=fsync)
        conn = t._core.spool._conn
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == level  # NORMAL, FULL
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    def test_files_are_private_and_never_hold_the_api_key(
        self, fake_px: FakePX, spool_dir: Path, make: Any
    ) -> None:
        fake_px.fail_rate = 1.0
        t = make(fake_px.url, spool_dir, spool_interval=0, **FAST_RETRY)
        for i in range(20):
            t.track(f"u{i}", "e", attributes={"n": i})
        for path in spool_dir.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
            assert API_KEY.encode() not in path.read_bytes(), path
        assert stat.S_IMODE(spool_dir.stat().st_mode) & 0o077 == 0
        t.shutdown(timeout=0)
        for path in spool_dir.iterdir():
            assert API_KEY.encode() not in path.read_bytes(), path

    def test_a_tracker_nobody_holds_releases_its_file(
        self, fake_px: FakePX, spool_dir: Path
    ) -> None:
        def job() -> None:
            t = spool_tracker(fake_px.url, spool_dir)
            t.track("u", "e")
            assert t.flush(timeout=10)

        before = {th.name for th in threading.enumerate()}
        for _ in range(3):
            job()

        def released() -> bool:
            gc.collect()
            spool_threads = [th for th in threading.enumerate() if th.name == "px-tracker-spool"]
            return not spool_files(spool_dir) and len(spool_threads) <= (
                "px-tracker-spool" in before
            )

        assert wait_until(released, 15)
        assert len(fake_px.events) == 3

    def test_shutdown_keeps_undelivered_events_and_says_so(
        self, fake_px: FakePX, spool_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        fake_px.fail_rate = 1.0
        with caplog.at_level(logging.WARNING, logger="tracker"):
            leave_events(fake_px.url, spool_dir, 7, **FAST_RETRY)
        assert "7 event(s) not delivered within 0.0s stay in the spool" in caplog.text
        assert "dropped" not in caplog.text


class TestRecovery:
    def test_a_new_tracker_sends_what_an_earlier_one_left_oldest_first(
        self, fake_px: FakePX, spool_dir: Path, make: Any
    ) -> None:
        fake_px.fail_rate = 1.0
        ids = leave_events(fake_px.url, spool_dir, 30, **FAST_RETRY)
        fake_px.fail_rate = 0.0
        fake_px.clear()
        t = make(fake_px.url, spool_dir, workers=1)
        assert t.flush(timeout=30)
        s = t.stats()
        assert (s.tracked, s.recovered, s.delivered, s.pending) == (0, 30, 30, 0)
        assert [e["eventId"] for e in fake_px.events] == ids
        assert [e["attributes"] for e in fake_px.events] == [{"i": i} for i in range(30)]
        t.shutdown()
        assert spool_files(spool_dir) == []

    def test_counters_add_up_at_every_moment_while_recovering(
        self, fake_px: FakePX, spool_dir: Path, make: Any
    ) -> None:
        fake_px.fail_rate = 1.0
        leave_events(fake_px.url, spool_dir, 300, **FAST_RETRY)
        fake_px.fail_rate = 0.0
        t = make(fake_px.url, spool_dir, max_queue_size=20)
        with InvariantSampler(t, pause=0) as sampler:
            for i in range(200):
                t.track(f"new-{i}", "e")
            assert t.flush(timeout=60)
        assert sampler.samples > 0
        assert sampler.broken == []
        s = t.stats()
        assert (s.tracked, s.recovered, s.delivered) == (200, 300, 500)

    def test_events_of_another_key_are_left_alone_and_logged_once(
        self, fake_px: FakePX, spool_dir: Path, make: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        fake_px.fail_rate = 1.0
        leave_events(fake_px.url, spool_dir, 5, api_key="k-other-key", **FAST_RETRY)
        fake_px.fail_rate = 0.0
        with caplog.at_level(logging.WARNING, logger="tracker"):
            for _ in range(2):
                t = make(fake_px.url, spool_dir)
                assert t.stats().recovered == 0
                t.shutdown()
        assert caplog.text.count("another API key or endpoint") == 1
        assert "k-other-key" not in caplog.text
        assert fake_px.events == []
        t = make(fake_px.url, spool_dir, api_key="k-other-key")
        assert t.flush(timeout=30)
        assert t.stats().recovered == 5


class TestOutages:
    def test_an_outage_past_max_retry_time_loses_nothing(
        self, fake_px: FakePX, spool_dir: Path, make: Any
    ) -> None:
        clock = FakeClock()
        fake_px.fail_rate = 1.0
        t = make(fake_px.url, spool_dir, clock=clock, max_queue_size=10)
        for i in range(40):  # four times what memory may hold
            assert t.track(f"u{i}", "e") is not None
        for _ in range(80):  # 400 s: past max_retry_time's default of 300
            clock.advance(5.0)
            before = len(fake_px.requests)
            wait_until(lambda b=before: len(fake_px.requests) > b, 2)
        s = t.stats()
        assert (s.failed, s.dropped, s.pending) == (0, 0, 40)
        assert s.retries > 40
        fake_px.fail_rate = 0.0
        # (flush's deadline runs on the fake clock: poll the counters instead)
        for _ in range(40):
            clock.advance(30.0)
            if wait_until(lambda: t.stats().pending == 0, 0.5):
                break
        assert t.stats().delivered == 40
        assert len({e["eventId"] for e in fake_px.events}) == 40

    def test_an_explicit_max_retry_time_still_applies(
        self, fake_px: FakePX, spool_dir: Path, make: Any
    ) -> None:
        clock = FakeClock()
        fake_px.fail_rate = 1.0
        errors: list[DeliveryError] = []
        t = make(
            fake_px.url,
            spool_dir,
            clock=clock,
            max_retry_time=10,
            on_error=lambda e, err: errors.append(err),
        )
        t.track("u", "e")
        for _ in range(20):
            clock.advance(2.0)
            if wait_until(lambda: errors, 0.2):
                break
        assert [e.reason for e in errors] == ["retries_exhausted"]
        assert wait_until(lambda: rows_on_disk(spool_dir) == 0, 5)

    def test_a_full_spool_applies_the_overflow_policy(
        self, fake_px: FakePX, spool_dir: Path, make: Any
    ) -> None:
        fake_px.fail_rate = 1.0
        errors: list[str] = []
        t = make(
            fake_px.url,
            spool_dir,
            spool_max_bytes=8192,
            on_error=lambda e, err: errors.append(err.reason),
            **FAST_RETRY,
        )
        returned = [t.track(f"u{i}", "e", attributes={"pad": "x" * 200}) for i in range(100)]
        s = t.stats()
        assert s.dropped_by_reason["spool_full"] > 0
        assert s.dropped_by_reason["spool_full"] == returned.count(None) == len(errors)
        assert set(errors) == {"spool_full"}
        assert invariant_holds(s)


class TestBadDisks:
    def test_a_corrupt_file_is_moved_aside_with_one_error(
        self, fake_px: FakePX, spool_dir: Path, make: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        spool_dir.mkdir()
        (spool_dir / "host-1-abcd.spool").write_bytes(b"not a database at all " * 100)
        with caplog.at_level(logging.ERROR, logger="tracker"):
            t = make(fake_px.url, spool_dir)
            t.track("u", "e")
            assert t.flush(timeout=10)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1
        assert "corrupt" in errors[0].getMessage()
        assert (spool_dir / "host-1-abcd.spool.corrupt").exists()
        assert not (spool_dir / "host-1-abcd.spool").exists()
        assert len(fake_px.events) == 1

    def test_a_truncated_file_is_moved_aside(
        self, fake_px: FakePX, spool_dir: Path, make: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        fake_px.fail_rate = 1.0
        leave_events(fake_px.url, spool_dir, 400, **FAST_RETRY)
        fake_px.fail_rate = 0.0
        (path,) = spool_files(spool_dir)
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
        with caplog.at_level(logging.ERROR, logger="tracker"):
            t = make(fake_px.url, spool_dir)
            t.track("u", "e")
            assert t.flush(timeout=10)
        assert sum(1 for r in caplog.records if r.levelno >= logging.ERROR) == 1
        assert Path(str(path) + ".corrupt").exists()
        assert invariant_holds(t.stats())

    def test_a_read_only_directory_keeps_events_in_memory(
        self, fake_px: FakePX, tmp_path: Path, make: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        mount = tmp_path / "ro"
        mount.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "none", str(mount)],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a read-only tmpfs here: {done.stderr!r}")
        try:
            with caplog.at_level(logging.WARNING, logger="tracker"):
                t = make(fake_px.url, mount, spool_interval=0)
                ids = [t.track(f"u{i}", "e") for i in range(20)]
                assert t.flush(timeout=10)
                s = t.stats()
                t.shutdown()
        finally:
            subprocess.run(["umount", str(mount)], check=False)
        assert None not in ids
        assert (s.delivered, s.spooled) == (20, 0)
        assert caplog.text.count("kept in memory only") == 1


class TestOptions:
    def test_spool_with_sync_mode_is_refused(self, spool_dir: Path) -> None:
        with pytest.raises(ConfigError, match="'spool' cannot be combined with sync_mode"):
            Tracker(API_KEY, spool=str(spool_dir), sync_mode=True)

    def test_a_spool_that_is_a_file_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "file"
        path.write_text("x")
        with pytest.raises(ConfigError, match="'spool' must be a directory"):
            Tracker(API_KEY, spool=str(path))

    def test_bad_interval_and_size_name_the_option(self, spool_dir: Path) -> None:
        with pytest.raises(ConfigError, match="'spool_interval' must be a number >= 0"):
            Tracker(API_KEY, spool=str(spool_dir), spool_interval=-1)
        with pytest.raises(ConfigError, match="'spool_max_bytes' must be an int >= 4096"):
            Tracker(API_KEY, spool=str(spool_dir), spool_max_bytes=10)

    def test_the_environment_sets_the_spool(
        self, spool_dir: Path, monkeypatch: pytest.MonkeyPatch, fake_px: FakePX
    ) -> None:
        monkeypatch.setenv("PX_SPOOL", str(spool_dir))
        monkeypatch.setenv("PX_SPOOL_MAX_BYTES", "100000")
        t = Tracker(API_KEY, product_key=PRODUCT_KEY, base_url=fake_px.url, flush_at_exit=False)
        try:
            assert t.config.spool == str(spool_dir)
            assert t.config.spool_max_bytes == 100000
            assert t.config.retries_unlimited
            assert spool_dir.is_dir()
        finally:
            t.shutdown()

    def test_a_dry_run_neither_spools_nor_sends_what_is_left(
        self, fake_px: FakePX, spool_dir: Path, make: Any
    ) -> None:
        fake_px.fail_rate = 1.0
        leave_events(fake_px.url, spool_dir, 3, **FAST_RETRY)
        fake_px.fail_rate = 0.0
        fake_px.clear()
        t = make(fake_px.url, spool_dir, send=False)
        t.track("u", "e")
        assert t.stats().recovered == 0
        assert rows_on_disk(spool_dir) == 3
        assert fake_px.requests == []


def test_environment_is_clean() -> None:
    assert "PX_SPOOL" not in os.environ
