"""Delivery against a real HTTP server (FakePX): requests, answers, retries, pauses, pacing."""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest

from tracker import DeliveryError, Tracker, __version__
from tracker.testing import FakeClock, FakePX

from ._support import API_KEY, FAST_RETRY, Recorder, wait_until

MakeTracker = Callable[..., Tracker]


def error_after(
    fake_px: FakePX, make_tracker: MakeTracker, status: int, **answer: Any
) -> DeliveryError:
    """The DeliveryError of one event PX answers ``status`` (``answer``: its headers and
    body), once flush() has returned True."""
    failures = Recorder()
    fake_px.respond_next(status, **answer)
    tracker = make_tracker(fake_px.url, on_error=failures)
    tracker.track("u1", "e")
    assert tracker.flush(10)
    return failures.errors[0]


class TestRequest:
    def test_one_post_per_event_with_the_documented_headers(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        tracker = make_tracker(fake_px.url)
        ids = [tracker.track(f"u{i}", "signup") for i in range(5)]
        assert tracker.flush(10)
        requests = fake_px.requests
        assert len(requests) == 5
        assert sorted(r.body["eventId"] for r in requests) == sorted(ids)
        for request in requests:
            assert request.method == "POST"
            assert request.path == "/v1/events/custom"
            assert request.headers["X-APTRINSIC-API-KEY"] == API_KEY
            assert request.headers["Content-Type"] == "application/json"
            assert f"px-tracker/{__version__}" in request.headers["User-Agent"]

    def test_connections_are_kept_alive_and_shared(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        tracker = make_tracker(fake_px.url, workers=2)
        for i in range(60):
            tracker.track(f"u{i}", "e")
        assert tracker.flush(10)
        ports = {r.client_port for r in fake_px.requests}
        assert 1 <= len(ports) <= 2, ports

    def test_retried_request_carries_the_same_event_id(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        fake_px.respond_next(503, times=2)
        tracker = make_tracker(fake_px.url, **FAST_RETRY)
        event_id = tracker.track("u1", "e")
        assert tracker.flush(10)
        assert [r.body["eventId"] for r in fake_px.requests] == [event_id] * 3
        assert [r.status for r in fake_px.requests] == [503, 503, 201]


class TestEnvironmentSettings:
    def test_a_proxy_from_the_environment_carries_the_requests(
        self, fake_px: FakePX, make_tracker: MakeTracker, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # FakePX reads the absolute-form request line a plain-http proxy receives, so it
        # can stand in for the proxy of a (non-loopback, unreachable) PX host.
        monkeypatch.setenv("HTTP_PROXY", fake_px.url)
        tracker = make_tracker("http://px.invalid", allow_insecure_http=True)
        event_id = tracker.track("u1", "via-proxy")
        assert tracker.flush(10)
        assert fake_px.event_ids() == [event_id]

    def test_no_proxy_is_used_for_a_loopback_server(
        self, fake_px: FakePX, make_tracker: MakeTracker, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
        tracker = make_tracker(fake_px.url)
        tracker.track("u1", "direct")
        assert tracker.flush(10)
        assert len(fake_px.events) == 1


class TestAnswers:
    @pytest.mark.parametrize("status", [200, 201, 202, 204])
    def test_2xx_is_delivered(
        self, fake_px: FakePX, make_tracker: MakeTracker, status: int
    ) -> None:
        delivered: list[Any] = []
        fake_px.respond_next(status, body=b"")
        tracker = make_tracker(fake_px.url, on_success=delivered.append)
        event_id = tracker.track("u1", "e")
        assert tracker.flush(10)
        assert [e.event_id for e in delivered] == [event_id]
        stats = tracker.stats()
        assert (stats.delivered, stats.failed, stats.retries) == (1, 0, 0)

    @pytest.mark.parametrize("status", [408, 500, 502, 503, 504, 599])
    def test_transient_answers_are_retried(
        self, fake_px: FakePX, make_tracker: MakeTracker, status: int
    ) -> None:
        fake_px.respond_next(status, times=2)
        tracker = make_tracker(fake_px.url, **FAST_RETRY)
        tracker.track("u1", "e")
        assert tracker.flush(10)
        stats = tracker.stats()
        assert (stats.delivered, stats.retries, stats.failed) == (1, 2, 0)
        assert len(fake_px.requests) == 3

    @pytest.mark.parametrize(
        ("status", "reason"),
        [
            (400, "rejected"),
            (404, "rejected"),
            (409, "rejected"),
            (413, "rejected"),
            (422, "rejected"),
            (501, "rejected"),
            (505, "rejected"),
            (301, "rejected"),
            (302, "rejected"),
            (307, "rejected"),
            (401, "unauthorized"),
            (403, "unauthorized"),
        ],
    )
    def test_permanent_answers_fail_once_without_retry(
        self, fake_px: FakePX, make_tracker: MakeTracker, status: int, reason: str
    ) -> None:
        failures = Recorder()
        fake_px.respond_next(status, headers={"Location": fake_px.url + "/v1/events/custom"})
        tracker = make_tracker(fake_px.url, on_error=failures, **FAST_RETRY)
        event_id = tracker.track("u1", "e")
        assert tracker.flush(10)
        assert len(fake_px.requests) == 1  # not retried, redirects not followed
        assert failures.reasons() == [reason]
        event, error = failures.events[0]
        assert event.event_id == event_id == error.event_id
        assert error.status_code == status
        stats = tracker.stats()
        assert stats.failed == 1
        assert stats.failed_by_reason[reason] == 1
        assert stats.retries == 0

    def test_px_error_body_becomes_the_error_message(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        error = error_after(
            fake_px,
            make_tracker,
            400,
            body={
                "externalapierror": {
                    "status": "BAD_REQUEST",
                    "message": "Validation failed",
                    "debugMessage": None,
                    "subErrors": [{"message": "identifyId must not be null"}],
                }
            },
        )
        assert error.message == "Validation failed; identifyId must not be null"
        assert "HTTP 400: Validation failed; identifyId must not be null" in str(error)

    def test_html_403_is_unauthorized_with_a_readable_message(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        html = "<html><head><style>p{}</style></head><body><h1>403 Forbidden</h1></body></html>"
        error = error_after(
            fake_px, make_tracker, 403, headers={"Content-Type": "text/html"}, body=html
        )
        assert error.reason == "unauthorized"
        assert error.message == "403 Forbidden"

    def test_a_server_echoing_the_key_does_not_leak_it(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        error = error_after(
            fake_px, make_tracker, 401, body=f"Authentication failed for key {API_KEY}"
        )
        assert API_KEY not in str(error)
        assert error.message == "Authentication failed for key ***"

    def test_a_dropped_connection_is_retried(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        fake_px.respond_next(None)
        tracker = make_tracker(fake_px.url, **FAST_RETRY)
        tracker.track("u1", "e")
        assert tracker.flush(10)
        assert [r.status for r in fake_px.requests] == [None, 201]
        assert tracker.stats().delivered == 1

    def test_a_read_timeout_is_retried_then_exhausted(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        failures = Recorder()
        fake_px.latency = 1.0
        tracker = make_tracker(
            fake_px.url, timeout=0.2, max_retries=1, on_error=failures, **FAST_RETRY
        )
        tracker.track("u1", "e")
        assert tracker.flush(10)
        assert failures.reasons() == ["retries_exhausted"]
        error = failures.errors[0]
        assert error.status_code is None
        assert "Timeout" in (error.message or "")
        assert error.attempts == 2


class TestRetryBudget:
    def test_max_retries_bounds_the_attempts_and_fails_once(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        failures = Recorder()
        fake_px.fail_rate = 1.0
        tracker = make_tracker(fake_px.url, max_retries=3, on_error=failures, **FAST_RETRY)
        event_id = tracker.track("u1", "e")
        assert tracker.flush(10)
        assert len(fake_px.requests) == 4
        assert failures.reasons() == ["retries_exhausted"]
        error = failures.errors[0]
        assert (error.event_id, error.status_code, error.attempts) == (event_id, 500, 4)
        assert error.message == "Internal server error"
        stats = tracker.stats()
        assert (stats.retries, stats.failed_by_reason["retries_exhausted"]) == (3, 1)

    def test_zero_retries_means_a_single_attempt(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        fake_px.fail_rate = 1.0
        tracker = make_tracker(fake_px.url, max_retries=0)
        tracker.track("u1", "e")
        assert tracker.flush(10)
        assert len(fake_px.requests) == 1
        assert tracker.stats().failed == 1

    def test_max_retry_time_stops_retrying(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        clock = FakeClock()
        failures = Recorder()
        failed_at: list[float] = []

        def on_error(event: Any, error: DeliveryError) -> None:
            failed_at.append(clock.monotonic())
            failures(event, error)

        fake_px.fail_rate = 1.0
        tracker = make_tracker(
            fake_px.url,
            clock=clock,
            max_retries=100,
            max_retry_time=10,
            backoff_base=1,
            backoff_max=2,
            on_error=on_error,
            rate_limit=None,
        )
        start = clock.monotonic()
        tracker.track("u1", "e")
        assert wait_until(lambda: len(fake_px.requests) >= 1)
        deadline = time.monotonic() + 20
        while not failures.events and time.monotonic() < deadline:
            clock.advance(0.25)
            time.sleep(0.002)
        assert failures.reasons() == ["retries_exhausted"]
        assert 8 <= failed_at[0] - start <= 10.25  # no attempt planned past 10 s
        assert len(fake_px.requests) >= 5  # it did retry meanwhile

    def test_a_waiting_retry_does_not_stall_later_events(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        clock = FakeClock()
        fake_px.respond_next(500)
        tracker = make_tracker(
            fake_px.url, clock=clock, workers=1, backoff_base=30, backoff_max=30, rate_limit=None
        )
        first = tracker.track("u1", "first")
        assert wait_until(lambda: tracker.stats().retries == 1)
        second = tracker.track("u2", "second")
        assert fake_px.wait_for(1, timeout=10)
        assert fake_px.event_ids() == [second]
        assert wait_until(lambda: tracker.stats().pending == 1)  # the first waits
        assert not tracker.flush(timeout=0)
        clock.advance(31)  # full jitter: the retry is due within 30 s
        assert fake_px.wait_for(2, timeout=10)
        assert fake_px.event_ids() == [second, first]
        assert tracker.flush(10)


class TestRateLimited:
    def test_missing_retry_after_uses_the_default_pause(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        fake_px.respond_next(429)
        tracker = make_tracker(fake_px.url, default_retry_after=0.5, rate_limit=None)
        tracker.track("u1", "e")
        assert tracker.flush(15)
        first, second = fake_px.requests
        assert second.arrived_at - first.answered_at >= 0.45

    def test_retry_after_is_capped(self, fake_px: FakePX, make_tracker: MakeTracker) -> None:
        fake_px.respond_next(429, headers={"Retry-After": "3600"})
        tracker = make_tracker(fake_px.url, max_retry_after=0.3, rate_limit=None)
        tracker.track("u1", "e")
        assert tracker.flush(15)
        first, second = fake_px.requests
        assert 0.25 <= second.arrived_at - first.answered_at < 3

    def test_429s_do_not_use_up_max_retries(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        fake_px.respond_next(429, headers={"Retry-After": "0"}, times=3)
        tracker = make_tracker(fake_px.url, max_retries=0, rate_limit=None)
        tracker.track("u1", "e")
        assert tracker.flush(15)
        stats = tracker.stats()
        assert (stats.delivered, stats.rate_limited, stats.retries) == (1, 3, 3)

    def test_a_retry_after_beyond_max_retry_time_fails_the_event(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        failures = Recorder()
        fake_px.respond_next(429, headers={"Retry-After": "30"})
        tracker = make_tracker(fake_px.url, max_retry_time=5, on_error=failures)
        tracker.track("u1", "e")
        assert tracker.flush(10)
        assert failures.reasons() == ["retries_exhausted"]
        assert failures.errors[0].status_code == 429

    def test_a_pause_seen_through_a_fake_clock(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        clock = FakeClock()
        fake_px.respond_next(429, headers={"Retry-After": "60"})
        tracker = make_tracker(fake_px.url, clock=clock, workers=3, rate_limit=None)
        tracker.track("u1", "first")
        assert wait_until(lambda: tracker.stats().rate_limited == 1)
        for i in range(5):
            tracker.track(f"u{i}", "later")
        time.sleep(0.2)  # real time: nobody may send while the fake minute has not passed
        assert len(fake_px.requests) == 1
        clock.advance(59)
        time.sleep(0.1)
        assert len(fake_px.requests) == 1
        clock.advance(2)
        assert fake_px.wait_for(6, timeout=10)
        assert tracker.flush(10)


class TestPacing:
    def test_rate_limit_spreads_requests_after_a_short_burst(
        self, fake_px: FakePX, make_tracker: MakeTracker
    ) -> None:
        tracker = make_tracker(fake_px.url, rate_limit=20, workers=4)
        for i in range(30):
            tracker.track(f"u{i}", "e")
        assert tracker.flush(15)
        arrivals = sorted(r.arrived_at for r in fake_px.requests)
        assert len(arrivals) == 30
        # GCRA: at most 2 (0.1 s worth) + 20 * w requests in any window of w seconds (slack
        # for the time between the client's slot and the server's read).
        for i, start in enumerate(arrivals):
            for j in range(i, len(arrivals)):
                width = arrivals[j] - start
                assert j - i + 1 <= 2 + 20 * (width + 0.05) + 1
        assert arrivals[-1] - arrivals[0] >= (30 - 2) / 20 - 0.1

    def test_a_server_limit_matching_the_client_sees_few_429s(
        self, make_tracker: MakeTracker
    ) -> None:
        with FakePX(rate_limit=100) as px:
            tracker = make_tracker(px.url, rate_limit=100, workers=4)
            for i in range(250):
                tracker.track(f"u{i}", "e")
            assert tracker.flush(30)
            limited = sum(1 for r in px.requests if r.status == 429)
            assert limited <= 3, limited
            assert tracker.stats().delivered == 250


class TestDeadServer:
    def test_flush_returns_false_at_its_timeout(self, make_tracker: MakeTracker) -> None:
        with FakePX() as px:
            url = px.url
        tracker = make_tracker(url)
        tracker.track("u1", "e")
        started = time.monotonic()
        assert tracker.flush(timeout=0.5) is False
        assert 0.45 <= time.monotonic() - started < 3
        assert tracker.stats().pending == 1
