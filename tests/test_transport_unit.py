"""Unit tests of the transport's parsing (server_message, redact, describe, interpret) and,
through the in-memory transport on a FakeClock, of what the pipeline does with answers:
no sockets, no real sleeps."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from email.utils import formatdate

import pytest

from tracker import Tracker
from tracker._answers import MAX_MESSAGE, describe, interpret, redact, server_message
from tracker._retry import Kind
from tracker.testing import FakeClock, px_error
from tracker.testing._transport import Calls, MockRequest, MockResponse, mock_transport

from ._support import API_KEY, PRODUCT_KEY, Recorder

SECRET = "sk-UNIT-SECRET-42"


class TestServerMessage:
    def test_px_error_shape_with_sub_errors(self) -> None:
        body = px_error(400, "Invalid event", ["identifyId is required", "bad date"])
        text = server_message(json.dumps(body).encode(), SECRET)
        assert text is not None
        assert text.startswith("Invalid event")
        assert "identifyId is required" in text
        assert "bad date" in text

    @pytest.mark.parametrize("key", ["message", "error", "detail"])
    def test_plain_json_shapes(self, key: str) -> None:
        assert server_message(b'{"%s": "nope"}' % key.encode(), SECRET) == "nope"

    def test_html_is_reduced_to_its_text(self) -> None:
        body = b"<html><head><style>x{}</style><script>var a='<b>'</script></head>"
        body += b"<body><h1>Forbidden</h1>\n<p>no  access</p></body></html>"
        assert server_message(body, SECRET) == "Forbidden no access"

    @pytest.mark.parametrize("body", [b"", b"   ", b"<br/>"])
    def test_nothing_to_say_is_none(self, body: bytes) -> None:
        assert server_message(body, SECRET) is None

    def test_garbage_and_deep_json_do_not_raise(self) -> None:
        assert server_message(bytes(range(256)), SECRET) is not None
        deep = b"[" * 100_000 + b"]" * 100_000
        assert server_message(deep, SECRET) is not None

    def test_long_messages_are_cut_after_redaction(self) -> None:
        text = server_message(("x" * 290 + SECRET + " tail").encode(), SECRET)
        assert text is not None
        assert len(text) <= MAX_MESSAGE
        assert "sk-UNIT" not in text


class TestRedaction:
    @pytest.mark.parametrize(
        "text",
        [
            f"key {SECRET} refused",
            f"{SECRET}{SECRET}",
            f"split {SECRET[:5]}\n{SECRET[5:]} across lines",
            f"tabs\t{SECRET}\r\n",
        ],
    )
    def test_the_secret_never_survives(self, text: str) -> None:
        out = redact(text, SECRET)
        assert SECRET not in out
        assert "\n" not in out
        assert len(out) <= MAX_MESSAGE

    def test_no_secret_redacts_nothing(self) -> None:
        assert redact("a  b", "") == "a b"

    def test_describe_redacts_an_exception_from_server_bytes(self) -> None:
        exc = ConnectionError(("Connection aborted.", OSError(f"BadStatusLine('{SECRET}')")))
        text = describe(exc, SECRET)
        assert text.startswith("ConnectionError: ")
        assert SECRET not in text
        assert describe(OSError(), SECRET) == "OSError"

    @pytest.mark.parametrize("key", ["ab\\cd-1234", "ab'cd\"ef-1234", "it's-a-key"])
    def test_a_key_escaped_inside_an_exception_repr_is_redacted(self, key: str) -> None:
        # repr() of the line a server echoed doubles the key's backslashes and may
        # escape its quotes: the key as written there must not survive either.
        for line in (f"HELLO {key} x", f"HELLO {key} x'y\""):
            exc = ConnectionError(("Connection aborted.", http.client.BadStatusLine(line)))
            text = describe(exc, key)
            assert "***" in text
            assert "cd" not in text, text
            assert "key" not in text, text


class TestInterpret:
    def test_statuses(self) -> None:
        assert interpret(201, None, b"", SECRET, 0.0).kind is Kind.DELIVERED
        assert interpret(503, None, b"", SECRET, 0.0).kind is Kind.RETRY
        assert interpret(401, None, b"", SECRET, 0.0).kind is Kind.UNAUTHORIZED
        assert interpret(400, None, b"", SECRET, 0.0).kind is Kind.REJECTED

    def test_a_2xx_body_is_not_read_as_an_error(self) -> None:
        assert interpret(200, None, SECRET.encode(), SECRET, 0.0).message is None

    def test_a_429_carries_its_retry_after(self) -> None:
        result = interpret(429, "7", b"", SECRET, 0.0)
        assert (result.kind, result.status_code, result.retry_after) == (Kind.RATE_LIMITED, 429, 7)
        dated = interpret(429, formatdate(1000 + 30, usegmt=True), b"", SECRET, 1000.0)
        assert dated.retry_after == pytest.approx(30)
        unreadable = interpret(429, "Wed, 21 Oct 2015 07:28:00 +9999", b"", SECRET, 1000.0)
        assert unreadable.retry_after is None

    def test_a_refusal_echoing_the_key_is_redacted(self) -> None:
        message = interpret(401, None, f"bad key {SECRET}".encode(), SECRET, 0.0).message
        assert message == "bad key ***"


# -- the pipeline over the in-memory transport, on fake time ----------------------------------


def drive(clock: FakeClock, tracker: Tracker, step: float = 0.25, timeout: float = 20.0) -> None:
    """Move fake time on in small steps until everything is settled."""
    deadline = time.monotonic() + timeout
    while not tracker.flush(timeout=0):
        assert time.monotonic() < deadline, tracker.stats()
        clock.advance(step)
        time.sleep(0.002)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tracked(clock: FakeClock) -> Iterator[tuple[Recorder, list[Tracker]]]:
    recorder = Recorder()
    made: list[Tracker] = []
    yield recorder, made
    for t in made:
        t.shutdown(timeout=0)


def mock_tracker(
    clock: FakeClock, made: list[Tracker], recorder: Recorder, **options: object
) -> Tracker:
    t = Tracker(
        API_KEY,
        product_key=PRODUCT_KEY,
        base_url="http://127.0.0.1:9",  # never connected to
        clock=clock,
        on_error=recorder.on_error,
        on_success=recorder.on_success,
        flush_at_exit=False,
        rate_limit=None,
        **options,  # type: ignore[arg-type]
    )
    made.append(t)
    return t


def first_429(retry_after: str) -> object:
    def handler(request: MockRequest) -> MockResponse:
        if request.attempt == 1 and request.body["eventName"] == "first":
            return MockResponse(429, {"Retry-After": retry_after})
        return MockResponse(201)

    return handler


class TestOverTheMockTransport:
    def test_the_request_carries_the_key_and_the_wire_form(
        self, clock: FakeClock, tracked: tuple[Recorder, list[Tracker]]
    ) -> None:
        recorder, made = tracked
        with mock_transport() as calls:
            t = mock_tracker(clock, made, recorder)
            event_id = t.track("u1", "signup", attributes={"plan": "pro"})
            drive(clock, t)
        (request,) = calls.requests
        assert request.headers["X-APTRINSIC-API-KEY"] == API_KEY
        assert request.body["eventId"] == event_id
        assert request.body["attributes"] == {"plan": "pro"}
        assert recorder.delivered == [event_id]

    def test_retry_after_as_an_http_date_on_fake_time(
        self, clock: FakeClock, tracked: tuple[Recorder, list[Tracker]]
    ) -> None:
        # Was a socket test waiting ~2 s of real time for the date to pass.
        recorder, made = tracked
        until = int(clock.time()) + 60
        with mock_transport(first_429(formatdate(until, usegmt=True))) as calls:  # type: ignore[arg-type]
            t = mock_tracker(clock, made, recorder)
            t.track("u1", "first")
            drive(clock, t)
        first, second = calls.requests
        wall_minus_mono = clock.time() - clock.monotonic()
        assert second.at + wall_minus_mono >= until - 0.05
        assert second.at - first.at < 60 + 1.0  # and not much later
        s = t.stats()
        assert (s.rate_limited, s.delivered, s.failed) == (1, 1, 0)

    def test_retry_after_pauses_every_worker_on_fake_time(
        self, clock: FakeClock, tracked: tuple[Recorder, list[Tracker]]
    ) -> None:
        # Was a socket test waiting 2 s of real time; every sender waits out the pause.
        recorder, made = tracked
        with mock_transport(first_429("2")) as calls:  # type: ignore[arg-type]
            t = mock_tracker(clock, made, recorder, workers=4)
            first = t.track("u0", "first")
            ids = [t.track(f"u{i}", "e") for i in range(1, 20)]
            drive(clock, t, step=0.05)
        requests = calls.requests
        (limited,) = [r for r in requests if r.attempt == 1 and r.body["eventName"] == "first"]
        # Requests sent at the 429's moment were already on their way; none after it
        # until the pause is over.
        inside = [r.at for r in requests if limited.at < r.at < limited.at + 2.0]
        assert inside == []
        assert any(r.at >= limited.at + 2.0 for r in requests)
        assert sorted(recorder.delivered) == sorted([first, *ids])
        s = t.stats()
        assert (s.rate_limited, s.delivered, s.failed) == (1, 20, 0)

    def test_a_connection_error_is_retried_and_its_text_redacted(
        self, clock: FakeClock, tracked: tuple[Recorder, list[Tracker]]
    ) -> None:
        recorder, made = tracked

        def handler(request: MockRequest) -> MockResponse:
            raise ConnectionResetError(f"peer said {request.headers['X-APTRINSIC-API-KEY']}")

        with mock_transport(handler) as calls:
            t = mock_tracker(clock, made, recorder, max_retries=2, backoff_base=0.1)
            t.track("u", "e")
            drive(clock, t)
        assert len(calls.requests) == 3
        (error,) = recorder.errors
        assert error.reason == "retries_exhausted"
        assert error.message is not None
        assert API_KEY not in error.message
        assert "***" in error.message

    def test_the_transport_is_closed_at_shutdown(
        self, clock: FakeClock, tracked: tuple[Recorder, list[Tracker]]
    ) -> None:
        recorder, made = tracked
        with mock_transport() as calls:
            t = mock_tracker(clock, made, recorder)
            t.track("u", "e")
            drive(clock, t)
            t.shutdown(timeout=5)
        assert [transport.closed for transport in calls.transports] == [True]
        assert isinstance(calls, Calls)
