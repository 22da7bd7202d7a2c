"""Callbacks: on_success/on_error on the right thread, exceptions of every kind contained
where they would strand events, callbacks that track and flush."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import pytest

from tracker import DeliveryError, Tracker
from tracker.testing import FakePX

from ._support import Recorder, held_tracker, invariant_holds

MakeTracker = Callable[..., Tracker]


class TestCallbacks:
    def test_on_success_gets_the_event_on_a_worker_thread(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        seen: list[tuple[Any, str]] = []
        tracker = make_tracker(
            fake_px.url, on_success=lambda e: seen.append((e, threading.current_thread().name))
        )
        event_id = tracker.track("u1", "e", attributes={"a": 1})
        assert tracker.flush(10)
        ((event, thread),) = seen
        assert event.event_id == event_id
        assert event.attributes == {"a": 1}
        assert event.to_dict()["identifyId"] == "u1"
        assert thread.startswith("px-tracker-")

    def test_a_raising_callback_is_logged_and_the_worker_lives_on(
        self, fake_px: FakePX, make_tracker: MakeTracker, caplog: pytest.LogCaptureFixture
    ) -> None:
        def explode(event: Any) -> None:
            raise RuntimeError("callback bug")

        tracker = make_tracker(fake_px.url, workers=1, on_success=explode)
        with caplog.at_level(logging.ERROR, logger="tracker"):
            tracker.track("u", "one")
            assert tracker.flush(10)
            tracker.track("u", "two")
            assert tracker.flush(10)
        assert len(fake_px.events) == 2
        assert any("on_success callback raised" in r.getMessage() for r in caplog.records)

    def test_callbacks_may_track_and_flush_without_deadlock(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        holder: dict[str, Tracker] = {}
        flushed: list[bool] = []

        def on_success(event: Any) -> None:
            if event.event_name == "first":
                holder["t"].track("u", "follow-up")
                flushed.append(holder["t"].flush(timeout=10))
                holder["t"].stats()

        holder["t"] = tracker = make_tracker(fake_px.url, workers=1, on_success=on_success)
        tracker.track("u", "first")
        assert tracker.flush(timeout=15)
        assert flushed == [True]
        assert sorted(e["eventName"] for e in fake_px.events) == ["first", "follow-up"]

    def test_a_flush_from_a_callback_keeps_its_deadline_with_a_backlog(
        self, make_tracker: MakeTracker
    ) -> None:
        # flush() on a sender thread sends from that thread itself; it went on taking
        # queued events past its deadline, one request after another (4 s here).
        holder: dict[str, Tracker] = {}
        calls: list[tuple[bool, float]] = []

        def on_success(event: Any) -> None:
            if event.event_name == "first":
                started = time.monotonic()
                flushed = holder["t"].flush(timeout=0.2)
                calls.append((flushed, time.monotonic() - started))

        with FakePX(latency=0.1) as px:
            holder["t"] = tracker = make_tracker(px.url, workers=1, on_success=on_success)
            tracker.track("u", "first")
            for i in range(40):
                tracker.track("u", f"queued-{i}")
            assert tracker.flush(timeout=30)
        ((flushed, took),) = calls
        assert flushed is False
        # The deadline, plus the one request in flight when it passed, plus a loaded machine.
        assert took < 0.2 + 1.5, took

    def test_on_error_may_track_even_when_the_queue_is_full(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        holder: dict[str, Tracker] = {}
        calls: list[str] = []

        def on_error(event: Any, error: DeliveryError) -> None:
            calls.append(event.event_name)
            holder["t"].track("u", "from-callback")  # overflows again: no endless recursion

        holder["t"] = held_tracker(fake_px, make_tracker, max_queue_size=1, on_error=on_error)
        holder["t"].track("u", "overflow")
        assert calls[0] == "overflow"
        assert 1 < len(calls) <= 10
        fake_px.release()

    def test_on_error_has_run_when_flush_returns(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        seen: list[str] = []

        def slow_on_error(event: Any, error: DeliveryError) -> None:
            time.sleep(0.2)
            seen.append(error.reason)

        fake_px.respond_next(400)
        tracker = make_tracker(fake_px.url, on_error=slow_on_error)
        tracker.track("u", "e")
        assert tracker.flush(10)
        assert seen == ["rejected"]


def raising(exc: type[BaseException]) -> Callable[..., None]:
    def callback(*_: Any) -> None:
        raise exc("from a callback")

    return callback


BASE_EXCEPTIONS = [SystemExit, KeyboardInterrupt]


class TestBaseExceptionsInCallbacks:
    """issue 9 item 3: sys.exit() in a callback ended the sender thread, and the events it
    held were never settled. On a sender thread it is logged and ignored; on the caller's
    own thread it reaches the caller once the batch is settled and told."""

    @pytest.mark.parametrize("exc", BASE_EXCEPTIONS)
    def test_in_on_error_on_a_sender_thread_it_is_logged_and_the_sender_goes_on(
        self,
        fake_px: FakePX,
        make_tracker: MakeTracker,
        caplog: pytest.LogCaptureFixture,
        exc: type[BaseException],
    ) -> None:
        recorder = Recorder()
        fake_px.respond_next(400, times=3)
        tracker = make_tracker(
            fake_px.url, workers=1, on_error=raising(exc), on_success=recorder.on_success
        )
        with caplog.at_level(logging.ERROR, logger="tracker"):
            for i in range(3):
                tracker.track("u", f"rejected-{i}")
            assert tracker.flush(timeout=10)
            later = tracker.track("u", "later")
            assert tracker.flush(timeout=10)  # the one sender thread lived on
        assert recorder.delivered == [later]
        s = tracker.stats()
        assert (s.failed, s.delivered, s.pending) == (3, 1, 0)
        assert invariant_holds(s)
        logged = [r for r in caplog.records if exc.__name__ in r.getMessage()]
        assert len(logged) == 3
        assert all(r.levelno == logging.ERROR for r in logged)

    @pytest.mark.parametrize("exc", BASE_EXCEPTIONS)
    def test_in_on_success_on_a_sender_thread_every_event_still_settles(
        self, fake_px: FakePX, make_tracker: MakeTracker, exc: type[BaseException]
    ) -> None:
        tracker = make_tracker(fake_px.url, workers=1, on_success=raising(exc))
        ids = [tracker.track("u", f"e{i}") for i in range(5)]
        assert tracker.flush(timeout=10)
        assert sorted(fake_px.event_ids()) == sorted(ids)
        assert (tracker.stats().delivered, tracker.stats().pending) == (5, 0)
        fake_px.respond_next(400)
        tracker.track("u", "rejected")  # the one sender thread lived on to send it
        assert tracker.flush(timeout=10)
        assert tracker.stats().failed == 1

    @pytest.mark.parametrize("exc", BASE_EXCEPTIONS)
    def test_on_the_callers_thread_it_reaches_the_caller_after_the_event_settled(
        self, fake_px: FakePX, make_tracker: MakeTracker, exc: type[BaseException]
    ) -> None:
        fake_px.respond_next(400)
        tracker = make_tracker(fake_px.url, sync_mode=True, on_error=raising(exc))
        with pytest.raises(exc):
            tracker.track("u", "rejected")  # sync mode: on_error runs on this thread
        s = tracker.stats()
        assert (s.tracked, s.failed, s.pending) == (1, 1, 0)
        assert invariant_holds(s)
        event_id = tracker.track("u", "later")
        assert fake_px.event_ids()[-1] == event_id
