"""Hostile answers: HTML, empty, garbage and huge bodies; servers that stall, close mid-answer,
drip their body, send interim (1xx) answers or an unreadable Retry-After.

None may kill a worker or hang flush() past its timeout, and each ends as a counted
delivery, retry or failure with the documented reason. Answers FakePX cannot give come
from tests/_rawserver.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Callable, Optional

import pytest

from tracker import Tracker
from tracker.testing import FakePX

from ._rawserver import BAD_ZONE_DATES, DRIP, RawServer
from ._support import FAST_RETRY, Recorder, recorded_tracker

RawServers = Callable[..., RawServer]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def px() -> Iterator[FakePX]:
    with FakePX() as server:
        yield server


@pytest.fixture
def one_worker(px: FakePX, recorder: Recorder) -> Iterator[Tracker]:
    """One sender thread: a later delivery proves that very thread survived."""
    with recorded_tracker(px.url, recorder, **FAST_RETRY) as t:
        yield t


def requests_for(px: FakePX, event_id: Optional[str]) -> int:
    return sum(
        1 for r in px.requests if isinstance(r.body, dict) and r.body.get("eventId") == event_id
    )


def assert_later_event_delivers(t: Tracker, px: FakePX) -> None:
    later = t.track("u", "later")
    assert t.flush(timeout=10)
    assert later in px.event_ids()


HTML_403 = (
    "<!DOCTYPE html>\n<html><head><title>403 Forbidden</title>"
    "<style>body { color: red }</style><script>var x = '<b>';</script></head>\n"
    "<body><h1>Forbidden</h1><p>You don't have permission to access this resource.</p>"
    "</body></html>\n"
)
GARBAGE = bytes(range(256)) * 3 + b"\xff\xfe\x00{]"


class TestHostileAnswers:
    def test_html_403_fails_once_as_unauthorized_with_a_plain_text_message(
        self, px: FakePX, one_worker: Tracker, recorder: Recorder
    ) -> None:
        px.respond_next(403, headers={"Content-Type": "text/html"}, body=HTML_403)
        event_id = one_worker.track("u", "forbidden")
        assert one_worker.flush(timeout=10)
        (error,) = recorder.errors
        assert (error.reason, error.status_code, error.event_id) == ("unauthorized", 403, event_id)
        assert error.message is not None
        assert "Forbidden" in error.message
        assert "<" not in error.message
        assert "\n" not in error.message
        assert requests_for(px, event_id) == 1
        assert one_worker.stats().failed_by_reason["unauthorized"] == 1
        assert_later_event_delivers(one_worker, px)

    @pytest.mark.parametrize(
        ("status", "body", "outcome"),
        [
            (500, b"", "retried"),
            (503, GARBAGE, "retried"),
            (400, b"", "rejected"),
            (400, GARBAGE, "rejected"),
            (418, b"<<<>>>", "rejected"),
            (201, b"", "delivered"),
            (200, GARBAGE, "delivered"),
        ],
        ids=[
            "500-empty",
            "503-garbage",
            "400-empty",
            "400-garbage",
            "418-brackets",
            "201-empty",
            "200-garbage",
        ],
    )
    def test_empty_and_garbage_bodies_are_judged_by_the_status(
        self,
        px: FakePX,
        one_worker: Tracker,
        recorder: Recorder,
        status: int,
        body: bytes,
        outcome: str,
    ) -> None:
        px.respond_next(status, headers={"Content-Type": "application/json"}, body=body)
        event_id = one_worker.track("u", "odd-body")
        assert one_worker.flush(timeout=10)
        s = one_worker.stats()
        if outcome == "rejected":
            (error,) = recorder.errors
            assert (error.reason, error.status_code) == ("rejected", status)
            assert error.message is None or (
                len(error.message) <= 300 and "\n" not in error.message
            )
            assert requests_for(px, event_id) == 1
        else:
            assert recorder.errors == []
            assert event_id in recorder.delivered
            assert s.retries == (1 if outcome == "retried" else 0)
        assert_later_event_delivers(one_worker, px)

    @pytest.mark.parametrize(
        ("status", "outcome"), [(201, "delivered"), (500, "retried"), (400, "rejected")]
    )
    def test_a_5_mb_body_neither_hangs_nor_breaks_the_worker(
        self, px: FakePX, one_worker: Tracker, recorder: Recorder, status: int, outcome: str
    ) -> None:
        huge = b'{"message": "' + b"x" * (5 * 1024 * 1024) + b'"}'
        px.respond_next(status, body=huge)
        event_id = one_worker.track("u", "huge-answer")
        started = time.monotonic()
        assert one_worker.flush(timeout=20)
        assert time.monotonic() - started < 10
        if outcome == "rejected":
            (error,) = recorder.errors
            assert error.reason == "rejected"
            assert error.message is not None
            assert len(error.message) <= 300
        else:
            assert recorder.errors == []
            assert event_id in recorder.delivered
            assert one_worker.stats().retries == (1 if outcome == "retried" else 0)
        assert_later_event_delivers(one_worker, px)


def raw_tracker(server: RawServer, recorder: Recorder, **options: Any) -> Tracker:
    """recorded_tracker() with fast retries, sending to a raw server."""
    return recorded_tracker(server.url, recorder, **FAST_RETRY, **options)


class TestStallingAndBreakingServers:
    @pytest.mark.parametrize("stall", ["stall_silent", "stall_mid_body"])
    def test_a_stalled_answer_is_retried_until_retries_exhausted_and_flush_keeps_its_timeout(
        self, raw_server: Callable[..., RawServer], recorder: Recorder, stall: str
    ) -> None:
        server = raw_server([], default=stall)
        with raw_tracker(server, recorder, timeout=0.3, max_retry_time=1.0) as t:
            event_id = t.track("u", "stalled")
            started = time.monotonic()
            assert t.flush(timeout=0.5) is False
            assert time.monotonic() - started < 0.5 + 1.5
            assert t.flush(timeout=15)
            (error,) = recorder.errors
            assert (error.reason, error.event_id, error.status_code) == (
                "retries_exhausted",
                event_id,
                None if stall == "stall_silent" else error.status_code,
            )
            assert error.attempts >= 2
            assert t.stats().failed_by_reason["retries_exhausted"] == 1
            assert len(server.seen) == error.attempts
            server.default = "ok"
            later = t.track("u", "after-the-stall")
            assert t.flush(timeout=10)
            assert recorder.delivered == [later]

    def test_a_connection_closed_mid_body_is_retried_then_delivered(
        self, raw_server: Callable[..., RawServer], recorder: Recorder
    ) -> None:
        server = raw_server(["close_mid_body", "close_mid_body"], default="ok")
        with raw_tracker(server, recorder) as t:
            event_id = t.track("u", "cut-short")
            assert t.flush(timeout=10)
            assert recorder.errors == []
            assert recorder.delivered == [event_id]
            assert server.behaviours() == ["close_mid_body", "close_mid_body", "ok"]
            assert {s.event_id for s in server.seen} == {event_id}
            assert t.stats().retries == 2


class TestInterimAnswers:
    def test_103_early_hints_then_201_is_one_delivery(
        self, raw_server: RawServers, recorder: Recorder
    ) -> None:
        # issue 9 item 4: a 1xx was taken as the final answer (failed as "rejected").
        server = raw_server(["early_hints", "early_hints"], default="ok")
        with raw_tracker(server, recorder) as t:
            first = t.track("u", "hinted")
            assert t.flush(timeout=10)
            second = t.track("u", "hinted-again")  # the connection was not desynchronised
            assert t.flush(timeout=10)
            s = t.stats()
        assert recorder.errors == []
        assert recorder.delivered == [first, second]
        assert server.behaviours() == ["early_hints", "early_hints"]
        assert (s.delivered, s.failed, s.retries) == (2, 0, 0)


DRIP_TIMEOUT = 3 * DRIP  # every recv() gets its byte in time; the whole answer cannot


class TestLateBodies:
    """issue 9 item 5: ``timeout`` bounds the whole request, not each recv()."""

    def test_a_201_whose_body_drips_is_delivered_within_the_timeout(
        self, raw_server: RawServers, recorder: Recorder
    ) -> None:
        server = raw_server(["drip_201"], default="ok")
        with raw_tracker(server, recorder, timeout=DRIP_TIMEOUT) as t:
            event_id = t.track("u", "dripped")
            started = time.monotonic()
            assert t.flush(timeout=10)
            took = time.monotonic() - started
            s = t.stats()
        assert took < DRIP_TIMEOUT + 3.0, took  # the body alone would take 100 * DRIP seconds
        assert recorder.errors == []
        assert recorder.delivered == [event_id]
        assert (s.delivered, s.retries) == (1, 0)
        assert server.behaviours() == ["drip_201"]  # PX's 201 was its word: not sent again

    def test_a_503_whose_body_drips_is_retried_on_its_status(
        self, raw_server: RawServers, recorder: Recorder
    ) -> None:
        server = raw_server(["drip_503"], default="ok")
        with raw_tracker(server, recorder, timeout=DRIP_TIMEOUT) as t:
            event_id = t.track("u", "dripped")
            assert t.flush(timeout=10)
            s = t.stats()
        assert recorder.errors == []
        assert recorder.delivered == [event_id]
        assert server.behaviours() == ["drip_503", "ok"]
        assert (s.delivered, s.retries) == (1, 1)

    def test_dripping_answers_on_every_sender_neither_stall_flush_nor_drop_at_shutdown(
        self, raw_server: RawServers, recorder: Recorder
    ) -> None:
        workers = 4
        server = raw_server([], default="drip_201")
        t = raw_tracker(server, recorder, timeout=DRIP_TIMEOUT, workers=workers, rate_limit=None)
        try:
            ids = [t.track("u", "dripped", attributes={"i": i}) for i in range(2 * workers)]
            assert t.flush(timeout=15)
        finally:
            t.shutdown(timeout=5)
        s = t.stats()
        assert recorder.errors == []  # none dropped as "shutdown" after PX's 201
        assert sorted(recorder.delivered) == sorted(ids)
        assert (s.delivered, s.dropped, s.retries) == (2 * workers, 0, 0)
        assert DRIP * 100 > 15  # the bodies could never have arrived in time


class TestUnreadableRetryAfter:
    @pytest.mark.parametrize("answer", sorted(BAD_ZONE_DATES))
    def test_an_out_of_range_zone_offset_means_default_retry_after(
        self, raw_server: RawServers, recorder: Recorder, answer: str
    ) -> None:
        # issue 9 item 6: parsing raised OverflowError; the event failed as "rejected"
        # after one attempt and the 429 was not counted.
        pause = 0.3
        server = raw_server([answer], default="ok")
        with raw_tracker(server, recorder, default_retry_after=pause) as t:
            event_id = t.track("u", "limited")
            assert t.flush(timeout=10)
            s = t.stats()
        assert recorder.errors == []
        assert recorder.delivered == [event_id]
        assert (s.rate_limited, s.retries, s.delivered) == (1, 1, 1)
        limited, retried = server.seen
        assert (limited.behaviour, retried.behaviour) == (answer, "ok")
        assert retried.arrived_at - limited.arrived_at >= pause - 0.02
