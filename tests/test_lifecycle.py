"""Overflow policies, flush and shutdown, sync and dry-run modes, the default tracker, the
counters' invariant, and trackers nobody holds (callbacks: test_callbacks.py)."""

from __future__ import annotations

import gc
import logging
import threading
import time
import weakref
from typing import Any, Callable

import pytest

import tracker as tracker_module
import tracker._api as core
from tracker import (
    Clock,
    ConfigError,
    QueueFullError,
    Tracker,
)
from tracker._lifecycle import _cores
from tracker.testing import FakePX

from ._support import (
    API_KEY,
    FAST_RETRY,
    PRODUCT_KEY,
    InvariantSampler,
    Recorder,
    held_tracker,
    invariant_holds,
    wait_until,
)

MakeTracker = Callable[..., Tracker]


class TestOverflow:
    def test_drop_newest_refuses_the_new_event_and_reports_it(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        errors = Recorder()
        tracker = held_tracker(fake_px, make_tracker, max_queue_size=3, on_error=errors)
        kept = [tracker.track("u", f"e{i}") for i in range(2)]
        assert None not in kept
        caller = threading.current_thread().name
        assert tracker.track("u", "too-many", event_id="dropped-1") is None
        assert errors.ids() == ["dropped-1"]
        assert errors.reasons() == ["queue_overflow"]
        assert errors.failures[0][2] == caller  # on the caller's thread
        stats = tracker.stats()
        assert (stats.tracked, stats.dropped, stats.pending) == (4, 1, 3)
        assert stats.dropped_by_reason["queue_overflow"] == 1
        fake_px.release()
        assert tracker.flush(10)
        assert sorted(e["eventName"] for e in fake_px.events) == ["e0", "e1", "in-flight"]

    def test_drop_oldest_accepts_the_new_event_and_drops_the_oldest_waiting(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        errors = Recorder()
        tracker = held_tracker(
            fake_px, make_tracker, max_queue_size=3, overflow="drop_oldest", on_error=errors
        )
        oldest = tracker.track("u", "oldest")
        tracker.track("u", "middle")
        newest = tracker.track("u", "newest")
        assert newest is not None
        assert errors.ids() == [oldest]  # not the one in flight
        assert errors.reasons() == ["queue_overflow"]
        fake_px.release()
        assert tracker.flush(10)
        assert sorted(e["eventName"] for e in fake_px.events) == ["in-flight", "middle", "newest"]
        stats = tracker.stats()
        assert (stats.tracked, stats.delivered, stats.dropped) == (4, 3, 1)

    def test_drop_oldest_with_everything_in_flight_drops_the_new_one(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        errors = Recorder()
        tracker = held_tracker(
            fake_px, make_tracker, max_queue_size=1, overflow="drop_oldest", on_error=errors
        )
        assert tracker.track("u", "new", event_id="n1") is None
        assert errors.ids() == ["n1"]
        fake_px.release()

    def test_raise_raises_and_counts_without_on_error(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        errors = Recorder()
        tracker = held_tracker(
            fake_px, make_tracker, max_queue_size=2, overflow="raise", on_error=errors
        )
        tracker.track("u", "fits")
        with pytest.raises(QueueFullError, match=r"max_queue_size=2"):
            tracker.track("u", "too-many")
        assert errors.errors == []  # the caller holds the exception
        stats = tracker.stats()
        assert (stats.tracked, stats.dropped_by_reason["queue_overflow"]) == (3, 1)
        assert invariant_holds(stats)
        fake_px.release()

    def test_block_waits_for_room(self, fake_px: FakePX, make_tracker: MakeTracker) -> None:
        tracker = held_tracker(fake_px, make_tracker, max_queue_size=1, overflow="block")
        result: list[Any] = []
        producer = threading.Thread(target=lambda: result.append(tracker.track("u", "later")))
        producer.start()
        time.sleep(0.2)
        assert result == []  # still blocked: no room
        fake_px.release()
        producer.join(10)
        assert len(result) == 1
        assert result[0] is not None
        assert tracker.flush(10)
        assert tracker.stats().delivered == 2

    def test_block_timeout_raises_queue_full(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        tracker = held_tracker(
            fake_px, make_tracker, max_queue_size=1, overflow="block", block_timeout=0.2
        )
        started = time.monotonic()
        with pytest.raises(QueueFullError, match=r"no room within 0\.2s"):
            tracker.track("u", "later")
        assert 0.15 <= time.monotonic() - started < 5
        assert tracker.stats().dropped_by_reason["queue_overflow"] == 1
        fake_px.release()

    def test_an_interrupted_blocked_track_still_ends_counted(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        caller = threading.current_thread()

        class InterruptingClock(Clock):
            def wait(self, cond: threading.Condition, timeout: float | None) -> None:
                if threading.current_thread() is caller:
                    raise KeyboardInterrupt  # Ctrl-C while waiting for room
                super().wait(cond, timeout)

        tracker = held_tracker(
            fake_px, make_tracker, max_queue_size=1, overflow="block", clock=InterruptingClock()
        )
        with pytest.raises(KeyboardInterrupt):
            tracker.track("u", "interrupted")
        stats = tracker.stats()
        assert (stats.tracked, stats.dropped_by_reason["queue_overflow"]) == (2, 1)
        assert invariant_holds(stats)
        fake_px.release()

    def test_shutdown_releases_a_blocked_producer(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        tracker = held_tracker(fake_px, make_tracker, max_queue_size=1, overflow="block")
        result: list[Any] = []
        producer = threading.Thread(target=lambda: result.append(tracker.track("u", "later")))
        producer.start()
        time.sleep(0.1)
        tracker.shutdown(timeout=0.1)
        producer.join(5)
        assert result == [None]
        assert tracker.stats().dropped_by_reason["shutdown"] == 2
        fake_px.release()

    def test_queue_bound_counts_events_waiting_to_retry(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        fake_px.fail_rate = 1.0
        tracker = make_tracker(fake_px.url, max_queue_size=2, backoff_base=30, backoff_max=30)
        tracker.track("u", "a")
        tracker.track("u", "b")
        assert wait_until(lambda: tracker.stats().retries >= 2)
        assert tracker.track("u", "c") is None


class TestFlushAndShutdown:
    def test_flush_waits_for_delivery(self, fake_px: FakePX, make_tracker: MakeTracker) -> None:
        fake_px.latency = 0.05
        tracker = make_tracker(fake_px.url, workers=4)
        for i in range(40):
            tracker.track(f"u{i}", "e")
        assert tracker.flush(10) is True
        assert len(fake_px.events) == 40
        assert tracker.stats().pending == 0

    def test_flush_with_nothing_tracked_is_immediately_true(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        assert make_tracker(fake_px.url).flush(timeout=0) is True

    def test_flush_timeout_must_be_a_non_negative_number(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        tracker = make_tracker(fake_px.url)
        with pytest.raises(ValueError, match="'timeout' must be None or a number >= 0"):
            tracker.flush(timeout=-1)

    def test_flush_is_not_kept_waiting_by_events_tracked_after_it(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        tracker = make_tracker(fake_px.url, workers=2)
        tracker.track("u", "before")
        stop = threading.Event()

        def keep_tracking() -> None:
            while not stop.is_set():
                tracker.track("u", "after")
                time.sleep(0.001)

        producer = threading.Thread(target=keep_tracking)
        producer.start()
        try:
            assert tracker.flush(10) is True
        finally:
            stop.set()
            producer.join()

    def test_shutdown_deadline_drops_and_reports_what_is_left(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        errors = Recorder()
        tracker = held_tracker(fake_px, make_tracker, on_error=errors)
        waiting = [tracker.track("u", f"w{i}") for i in range(3)]
        started = time.monotonic()
        assert tracker.shutdown(timeout=0.3) is False
        assert 0.25 <= time.monotonic() - started < 3
        stats = tracker.stats()
        assert (stats.pending, stats.dropped_by_reason["shutdown"]) == (0, 4)
        assert invariant_holds(stats)
        assert sorted(errors.ids()) == sorted([*waiting, stats_first_id(errors, waiting)])
        assert set(errors.reasons()) == {"shutdown"}
        fake_px.release()

    def test_after_shutdown_track_returns_none_and_counts_a_drop(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        errors = Recorder()
        tracker = make_tracker(fake_px.url, on_error=errors)
        assert tracker.shutdown() is True
        assert tracker.track("u", "late", event_id="late-1") is None
        stats = tracker.stats()
        assert (stats.tracked, stats.dropped_by_reason["shutdown"]) == (1, 1)
        assert errors.ids() == ["late-1"]
        assert tracker.shutdown() is True  # idempotent
        assert tracker.flush(0) is True

    def test_shutdown_stops_the_worker_threads(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        before = {t.name for t in threading.enumerate()}
        tracker = make_tracker(fake_px.url, workers=3)
        tracker.track("u", "e")
        tracker.shutdown()
        assert wait_until(lambda: {t.name for t in threading.enumerate()} <= before)
        assert tracker._core not in _cores

    def test_context_manager_flushes_on_exit(self, fake_px: FakePX) -> None:
        with Tracker(API_KEY, product_key=PRODUCT_KEY, base_url=fake_px.url) as tracker:
            tracker.track("u", "inside")
        assert [e["eventName"] for e in fake_px.events] == ["inside"]
        assert tracker.track("u", "outside") is None

    def test_a_sender_is_started_by_the_constructor(self, fake_px: FakePX) -> None:
        # Eagerly (Python 3.12+ refuses new threads at exit), and only one: more start
        # when the rate and the round trip need them (workers is their cap).
        with Tracker(API_KEY, base_url=fake_px.url, workers=3) as tracker:
            names = [t.name for t in threading.enumerate() if t.name.startswith("px-tracker-")]
            assert len(names) == 1
            assert all(t.daemon for t in threading.enumerate() if t.name in names)
            assert tracker.stats().tracked == 0


def stats_first_id(errors: Recorder, waiting: list[Any]) -> str:
    """The id of the event that was in flight: the one reported but not tracked here."""
    (extra,) = [event_id for event_id in errors.ids() if event_id not in waiting]
    return extra


class TestSyncMode:
    def test_track_returns_after_delivery_on_the_callers_thread(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        threads: list[str] = []
        tracker = make_tracker(
            fake_px.url,
            sync_mode=True,
            on_success=lambda e: threads.append(threading.current_thread().name),
        )
        event_id = tracker.track("u", "e")
        assert fake_px.event_ids() == [event_id]
        assert threads == [threading.current_thread().name]
        assert not any(t.name.startswith("px-tracker-") for t in threading.enumerate())
        assert tracker.stats().delivered == 1

    def test_same_retry_rules_inline(self, fake_px: FakePX, make_tracker: MakeTracker) -> None:
        errors = Recorder()
        fake_px.respond_next(503, times=2)
        tracker = make_tracker(fake_px.url, sync_mode=True, on_error=errors, **FAST_RETRY)
        tracker.track("u", "retried")
        assert [r.status for r in fake_px.requests] == [503, 503, 201]
        fake_px.fail_rate = 1.0
        tracker2 = make_tracker(fake_px.url, sync_mode=True, max_retries=2, on_error=errors)
        tracker2.track("u", "failing")
        assert errors.reasons() == ["retries_exhausted"]
        assert tracker.stats().retries == 2


class TestDryRun:
    def test_send_false_validates_counts_and_sends_nothing(self, fake_px: FakePX) -> None:
        errors = Recorder()
        with Tracker(
            API_KEY, product_key=PRODUCT_KEY, base_url=fake_px.url, send=False, on_error=errors
        ) as tracker:
            assert tracker.track("u", "e") is not None
            stats = tracker.stats()
            assert (stats.tracked, stats.dropped, stats.pending) == (1, 1, 0)
            assert stats.dropped_by_reason["dry_run"] == 1
            assert tracker.flush(0)
        assert fake_px.requests == []
        assert errors.errors == []  # a dry run is on purpose, not a failure


class TestDefaultTracker:
    @pytest.fixture(autouse=True)
    def _reset_default(self) -> Any:
        saved = core._default
        core._default = None
        yield
        if core._default is not None:
            core._default.shutdown(0)
        core._default = saved

    def test_configure_then_module_functions(self, fake_px: FakePX) -> None:
        tracker_module.configure(api_key=API_KEY, product_key=PRODUCT_KEY, base_url=fake_px.url)
        event_id = tracker_module.track("u", "module-level", attributes={"a": 1})
        assert tracker_module.flush(10)
        assert fake_px.event_ids() == [event_id]
        assert tracker_module.stats().delivered == 1
        assert tracker_module.shutdown() is True
        assert tracker_module.track("u", "after") is None

    def test_second_configure_flushes_and_replaces_the_first(self, fake_px: FakePX) -> None:
        fake_px.latency = 0.05
        first = tracker_module.configure(api_key=API_KEY, product_key="AP-1", base_url=fake_px.url)
        for i in range(5):
            tracker_module.track("u", f"old{i}")
        second = tracker_module.configure(api_key=API_KEY, product_key="AP-2", base_url=fake_px.url)
        assert len(fake_px.events) == 5  # the first was flushed
        assert first.track("u", "x") is None
        tracker_module.track("u", "new")
        assert tracker_module.flush(10)
        assert fake_px.events[-1]["propertyKey"] == "AP-2"
        assert tracker_module.default_tracker() is second

    def test_first_use_builds_from_the_environment(
        self, fake_px: FakePX, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("PX_API_KEY", API_KEY)
        monkeypatch.setenv("PX_PRODUCT_KEY", "AP-ENV-9")
        monkeypatch.setenv("PX_BASE_URL", fake_px.url)
        tracker_module.track("u", "from-env")
        assert tracker_module.flush(10)
        assert fake_px.events[0]["propertyKey"] == "AP-ENV-9"

    def test_no_configuration_and_no_key_is_a_config_error(self) -> None:
        with pytest.raises(ConfigError, match="api_key"):
            tracker_module.track("u", "e")


class TestCounters:
    def test_invariant_holds_at_every_sample_under_many_threads(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        fake_px.fail_rate = 0.2
        fake_px.drop_rate = 0.05
        tracker = make_tracker(
            fake_px.url, max_queue_size=200, workers=4, max_retries=2, rate_limit=None, **FAST_RETRY
        )

        def produce(n: int) -> None:
            for i in range(300):
                tracker.track(f"u{n}-{i}", "load")

        with InvariantSampler(tracker, pause=0) as sampler:
            producers = [threading.Thread(target=produce, args=(n,)) for n in range(6)]
            for producer in producers:
                producer.start()
            for producer in producers:
                producer.join(30)
            assert tracker.flush(30)
        assert sampler.broken == []
        assert sampler.samples > 10
        stats = tracker.stats()
        assert stats.tracked == 1800
        assert stats.pending == 0
        assert stats.delivered + stats.failed + stats.dropped == 1800
        assert stats.delivered == len(fake_px.events)
        assert stats.failed == stats.failed_by_reason["retries_exhausted"]
        assert stats.dropped == stats.dropped_by_reason["queue_overflow"]

    def test_stats_is_a_frozen_snapshot(self, fake_px: FakePX, make_tracker: MakeTracker) -> None:
        tracker = make_tracker(fake_px.url)
        before = tracker.stats()
        tracker.track("u", "e")
        assert tracker.flush(10)
        assert before.tracked == 0
        with pytest.raises(AttributeError):
            before.tracked = 5  # type: ignore[misc]
        assert tracker.stats().delivered == 1


class TestLogging:
    """The API key's absence from logs, reprs and errors under faults: test_secrets.py."""

    def test_the_library_adds_no_handler_but_a_null_one(self) -> None:
        handlers = logging.getLogger("tracker").handlers
        assert all(isinstance(h, logging.NullHandler) for h in handlers)
        assert logging.getLogger("tracker").level == logging.NOTSET


class TestNoSelfDeadlock:
    def test_a_callback_tracking_into_a_full_blocking_queue_does_not_hang(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        holder: dict[str, Tracker] = {}
        raised: list[str] = []

        def on_success(event: Any) -> None:
            if event.event_name != "first":
                return
            for i in range(5):
                try:
                    holder["t"].track("u", f"follow-{i}")
                except QueueFullError as exc:
                    raised.append(str(exc))

        holder["t"] = tracker = make_tracker(
            fake_px.url, workers=1, max_queue_size=2, overflow="block", on_success=on_success
        )
        tracker.track("u", "first")
        assert tracker.flush(timeout=15)
        assert raised  # the worker could not wait for itself: it got the exception instead
        assert "cannot wait" in raised[0]
        stats = tracker.stats()
        assert stats.dropped_by_reason["queue_overflow"] == len(raised)
        assert invariant_holds(stats)


class TestDroppedTrackers:
    """issue 9 item 8: a Tracker nobody holds is collected, and its threads end once what
    it held is settled (at exit: test_exit.py)."""

    @staticmethod
    def senders_since(baseline: set[threading.Thread]) -> list[str]:
        # Thread objects, not idents: Python reuses the idents of ended threads.
        return [
            t.name
            for t in threading.enumerate()
            if t not in baseline and t.name.startswith("px-tracker-")
        ]

    @pytest.mark.parametrize(
        "pending",
        [
            pytest.param(False, id="settled"),
            pytest.param(True, id="still-sending"),
        ],
    )
    def test_a_dropped_tracker_is_collected_and_its_senders_end(
        self, fake_px: FakePX, pending: bool
    ) -> None:
        baseline = set(threading.enumerate())
        t = Tracker(API_KEY, product_key=PRODUCT_KEY, base_url=fake_px.url, workers=2)
        if pending:
            fake_px.latency = 0.05
        ids = [t.track("u", f"e{i}") for i in range(6)]
        if not pending:
            assert t.flush(timeout=10)
        assert self.senders_since(baseline)
        ref = weakref.ref(t)
        del t
        gc.collect()
        assert ref() is None
        assert wait_until(lambda: not self.senders_since(baseline)), self.senders_since(baseline)
        assert sorted(fake_px.event_ids()) == sorted(ids)  # what it held was still sent
