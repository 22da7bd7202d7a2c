"""health() for readiness probes, the request figures of stats(), and the warnings an
operator acts on (each at most once a minute per reason, on the tracker's clock)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import pytest

import tracker
from tracker import Health, Tracker
from tracker._callbacks import Warnings
from tracker.testing import FakeClock, FakePX

from ._faults import drive
from ._support import API_KEY, wait_until

MakeTracker = Callable[..., Tracker]


def advance_until(clock: FakeClock, predicate: Callable[[], bool], step: float = 0.5) -> None:
    deadline = time.monotonic() + 20
    while not predicate():
        assert time.monotonic() < deadline
        clock.advance(step)
        time.sleep(0.005)


class TestHealth:
    def test_unhealthy_while_px_is_down_longer_than_the_threshold_then_healthy(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        clock = FakeClock()
        t = make_tracker(
            fake_px.url,
            clock=clock,
            rate_limit=None,
            max_retries=100,
            max_retry_time=10_000,
            backoff_base=2,
            backoff_max=4,
        )
        t.track("u0", "before")
        assert t.flush(10)
        healthy = t.health()
        assert healthy == Health(
            healthy=True,
            reason=None,
            last_success_age=healthy.last_success_age,
            failing_for=None,
            pending=0,
            paused_until=None,
            senders_alive=healthy.senders_alive,
        )
        assert healthy
        assert healthy.senders_alive >= 1
        assert healthy.last_success_age is not None
        assert 0 <= healthy.last_success_age < 1

        fake_px.fail_rate = 1.0  # PX is down
        t.track("u1", "during")
        assert wait_until(lambda: fake_px.requests[-1].status == 500)
        brief = t.health(unhealthy_after=30)
        assert brief.healthy  # down, but not for long yet
        assert brief.failing_for is not None
        assert brief.failing_for < 30
        advance_until(clock, lambda: (t.health(unhealthy_after=30).failing_for or 0) > 30)
        down = t.health(unhealthy_after=30)
        assert not down
        assert down.healthy is False
        assert down.reason is not None
        assert "no request has succeeded" in down.reason
        assert down.pending == 1
        assert down.last_success_age is not None
        assert down.last_success_age > 30
        assert t.health(unhealthy_after=120).healthy  # the threshold is the caller's
        assert len(fake_px.requests) > 5  # it kept retrying meanwhile

        fake_px.fail_rate = 0.0  # PX is back
        drive(clock, t)
        back = t.health(unhealthy_after=30)
        assert back.healthy
        assert back.reason is None
        assert back.failing_for is None
        assert back.pending == 0
        assert back.last_success_age is not None
        assert back.last_success_age < 5

    def test_events_px_refuses_are_no_outage(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        clock = FakeClock()
        t = make_tracker(fake_px.url, clock=clock)
        for _ in range(3):
            fake_px.respond_next(400)
            t.track("u0", "refused")
            assert t.flush(10)
            clock.advance(40)
        health = t.health(unhealthy_after=30)
        assert health.healthy
        assert health.failing_for is None
        assert t.stats().failed_by_reason["rejected"] == 3
        fake_px.respond_next(401)
        t.track("u0", "bad key")
        assert t.flush(10)
        clock.advance(31)
        assert not t.health(unhealthy_after=30).healthy  # a refused key is an outage

    def test_paused_until_says_when_a_429_pause_ends(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        clock = FakeClock()
        fake_px.respond_next(429, headers={"Retry-After": "20"})
        t = make_tracker(fake_px.url, clock=clock, rate_limit=None)
        t.track("u0", "e")
        assert wait_until(lambda: t.stats().retries == 1)
        paused = t.health()
        assert paused.paused_until == pytest.approx(clock.time() + 20, abs=0.5)
        assert paused.healthy  # a pause is not an outage (yet)
        drive(clock, t)
        assert t.health().paused_until is None

    def test_a_shut_down_tracker_is_not_healthy(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        t = make_tracker(fake_px.url)
        assert t.health().healthy
        t.shutdown()
        after = t.health()
        assert not after.healthy
        assert after.reason == "the tracker is shut down"

    def test_sync_mode_needs_no_senders(self, fake_px: FakePX, make_tracker: MakeTracker) -> None:
        t = make_tracker(fake_px.url, sync_mode=True)
        t.track("u0", "e")
        health = t.health()
        assert health.healthy
        assert health.senders_alive == 0
        assert health.last_success_age is not None

    def test_no_sender_thread_is_unhealthy_and_warned_once_a_minute(
        self,
        fake_px: FakePX,
        make_tracker: MakeTracker,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        clock = FakeClock()

        def refuse(self: threading.Thread) -> None:
            raise RuntimeError("can't create new thread at interpreter shutdown")

        with monkeypatch.context() as patch:
            patch.setattr(threading.Thread, "start", refuse)
            t = make_tracker(fake_px.url, clock=clock)
        t.track("u0", "e")
        with caplog.at_level(logging.WARNING, logger="tracker"):
            caplog.clear()
            first = t.health()
            t.health()
            clock.advance(61)
            t.health()
        assert not first.healthy
        assert first.senders_alive == 0
        assert first.reason == "no sender thread is running"
        assert no_senders(caplog) == 2
        assert t.flush(10)  # flush() sends on the caller's thread instead
        assert len(fake_px.events) == 1

    def test_module_level_health_is_the_default_trackers(
        self, fake_px: FakePX, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(tracker._api, "_default", None)
        tracker.configure(API_KEY, product_key="AP-1", base_url=fake_px.url, flush_at_exit=False)
        try:
            assert tracker.health() == tracker.default_tracker().health()
            assert tracker.health().healthy
        finally:
            tracker.shutdown(timeout=0)

    @pytest.mark.parametrize("bad", [0, -1, True, "60", None, float("nan")])
    def test_the_threshold_is_checked(
        self, fake_px: FakePX, make_tracker: MakeTracker, bad: Any
    ) -> None:
        t = make_tracker(fake_px.url)
        with pytest.raises(ValueError, match="'unhealthy_after' must be a number of seconds > 0"):
            t.health(unhealthy_after=bad)


def no_senders(caplog: pytest.LogCaptureFixture) -> int:
    return sum(
        1
        for r in caplog.records
        if r.levelno == logging.WARNING and "no sender thread is running" in r.getMessage()
    )


class TestRequestFigures:
    def test_latency_and_duration_are_measured_on_the_tracker_clock(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        clock = FakeClock()
        t = make_tracker(fake_px.url, clock=clock, rate_limit=None)
        fake_px.hold()
        t.track("u0", "e")
        assert wait_until(lambda: fake_px.in_progress == 1)
        clock.advance(3)  # the request takes three (fake) seconds
        fake_px.release()
        assert t.flush(10)
        stats = t.stats()
        assert stats.delivery_latency.count == stats.delivered == 1
        assert stats.delivery_latency.sum == pytest.approx(3, abs=0.01)
        assert stats.request_duration.count == 1
        assert stats.request_duration.sum == pytest.approx(3, abs=0.01)
        cumulative = dict(stats.request_duration.cumulative())
        assert (cumulative[2.5], cumulative[5.0]) == (0, 1)
        assert stats.last_errors == {}

    def test_the_last_error_of_each_reason_with_its_time(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        clock = FakeClock()
        fake_px.respond_next(401, body=f"bad key {API_KEY}")
        t = make_tracker(fake_px.url, clock=clock)
        t.track("u0", "e")
        assert t.flush(10)
        clock.advance(10)
        fake_px.respond_next(400, body={"message": "no such property"})
        t.track("u1", "e")
        assert t.flush(10)
        errors = t.stats().last_errors
        assert set(errors) == {"unauthorized", "rejected"}
        assert errors["unauthorized"].status_code == 401
        assert errors["unauthorized"].message == "bad key ***"  # redacted
        assert errors["unauthorized"].time == pytest.approx(clock.time() - 10)
        assert errors["rejected"].status_code == 400
        assert errors["rejected"].message == "no such property"
        assert errors["rejected"].time == pytest.approx(clock.time())


class TestWarnings:
    def test_once_a_minute_per_reason_on_the_given_clock(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        clock = FakeClock()
        warnings = Warnings(clock)
        with caplog.at_level(logging.DEBUG, logger="tracker"):
            for _ in range(3):
                warnings.warn("a", "A happened")
            warnings.warn("b", "B happened")
            clock.advance(59)
            warnings.warn("a", "A happened")
            clock.advance(1)
            warnings.warn("a", "A happened")
        shown = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert shown == [
            "A happened",
            "B happened",
            "A happened (and 3 more like it in the last minute)",
        ]

    @pytest.mark.parametrize(
        ("name", "text"),
        [
            ("overflow", "queue full (max_queue_size=1"),
            ("unauthorized", "PX refused the API key"),
            ("exhausted", "(retries_exhausted): HTTP 500"),
            ("long_pause", "every sender pauses for 30s"),
        ],
    )
    def test_each_warning_at_most_once_a_minute(
        self,
        fake_px: FakePX,
        make_tracker: MakeTracker,
        caplog: pytest.LogCaptureFixture,
        name: str,
        text: str,
    ) -> None:
        clock = FakeClock()
        t = make_tracker(
            fake_px.url, clock=clock, rate_limit=None, max_retries=0, max_queue_size=1, workers=1
        )

        def happen_twice() -> None:
            if name == "overflow":
                fake_px.hold()
                t.track("u", "e")
                for _ in range(2):
                    assert t.track("u", "overflowing") is None
                fake_px.release()
            elif name == "long_pause":
                fake_px.respond_next(429, headers={"Retry-After": "30"}, times=2)
                t.track("u", "e")
                assert wait_until(lambda: t.stats().retries >= 1)
                clock.advance(30.5)
                assert wait_until(lambda: t.stats().retries >= 2)
                clock.advance(30.5)
            else:
                fake_px.respond_next(401 if name == "unauthorized" else 500, times=2)
                t.track("u", "e")
                assert t.flush(10)
                t.track("u", "e")
            drive(clock, t)

        with caplog.at_level(logging.WARNING, logger="tracker"):
            happen_twice()
            first = [r.getMessage() for r in caplog.records if text in r.getMessage()]
            clock.advance(61)
            happen_twice()
            both = [r.getMessage() for r in caplog.records if text in r.getMessage()]
        assert len(first) == 1, first
        assert len(both) == 2, both
        assert "1 more like it" in both[1]
        assert all(API_KEY not in r.getMessage() for r in caplog.records)
