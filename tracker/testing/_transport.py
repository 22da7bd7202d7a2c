"""An in-memory transport for unit tests (compare httpx's MockTransport): a handler
function turns each request into an answer, no sockets involved.

    def handler(request: MockRequest) -> MockResponse:
        if request.attempt == 1:
            return MockResponse(429, {"Retry-After": "60"})
        return MockResponse(201)

    with mock_transport(handler) as calls:
        t = Tracker("k", product_key="AP-1", base_url="http://127.0.0.1:9", clock=FakeClock())
        ...

Installed through ``tracker._transport.set_factory`` (a test hook, not an option): every
tracker built inside the block sends through it. The answer goes through the same
interpretation as a real one (classification, redaction, Retry-After).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Mapping
from typing import Any, Callable, Optional, Union

import attrs

from tracker import _transport
from tracker._answers import Result, describe, encode, interpret
from tracker._config import Config
from tracker._event import CustomEvent
from tracker._retry import Kind
from tracker.testing._wire import API_KEY_HEADER


@attrs.frozen
class MockRequest:
    event: CustomEvent
    body: dict[str, Any]  # the JSON the real transport would send
    headers: Mapping[str, str]
    at: float  # the tracker's clock (monotonic) when it was sent
    attempt: int  # 1 for the first request carrying this event id


@attrs.frozen
class MockResponse:
    status: int
    headers: Mapping[str, str] = attrs.field(factory=dict)
    body: Union[bytes, str, dict[str, Any]] = b""

    def encoded(self) -> bytes:
        if isinstance(self.body, dict):
            return json.dumps(self.body).encode()
        return self.body.encode() if isinstance(self.body, str) else self.body


#: What a handler returns: an answer, or a Result as-is (a timeout, say). A handler that
#: raises OSError stands for a connection error (retried, as over a socket).
Handler = Callable[[MockRequest], Union[MockResponse, Result]]


class MockTransport:
    """The Transport seam's in-memory implementation; records every request."""

    def __init__(self, handler: Handler, config: Config, user_agent: str) -> None:
        self._handler = handler
        self._config = config
        self._headers = {
            API_KEY_HEADER: config.api_key,
            "Content-Type": "application/json",
            "User-Agent": user_agent,
        }
        self._lock = threading.Lock()
        self._attempts: dict[str, int] = {}
        self.requests: list[MockRequest] = []
        self.closed = False

    def send(self, event: CustomEvent, written: Optional[Callable[[], None]] = None) -> Result:
        clock = self._config.clock
        with self._lock:
            attempt = self._attempts[event.event_id] = self._attempts.get(event.event_id, 0) + 1
            request = MockRequest(
                event, json.loads(encode(event)), dict(self._headers), clock.monotonic(), attempt
            )
            self.requests.append(request)
        if written is not None:
            written()  # it has "left"
        secret = self._config.api_key
        try:
            answer = self._handler(request)
        except OSError as exc:
            return Result(Kind.RETRY, None, describe(exc, secret))
        if isinstance(answer, Result):
            return answer
        retry_after = {k.lower(): v for k, v in answer.headers.items()}.get("retry-after")
        return interpret(answer.status, retry_after, answer.encoded(), secret, clock.time())

    def close(self) -> None:
        self.closed = True


class Calls:
    """The transports built while installed (one per tracker, and per forked child)."""

    def __init__(self) -> None:
        self.transports: list[MockTransport] = []

    @property
    def requests(self) -> list[MockRequest]:
        return [r for t in self.transports for r in list(t.requests)]


@contextlib.contextmanager
def mock_transport(handler: Optional[Handler] = None) -> Iterator[Calls]:
    """Send through ``handler`` (default: 201 for everything) in every tracker built
    inside the block."""
    calls = Calls()
    answer: Handler = handler or (lambda request: MockResponse(201))

    def factory(config: Config, user_agent: str, pool_size: int) -> MockTransport:
        transport = MockTransport(answer, config, user_agent)
        calls.transports.append(transport)
        return transport

    _transport.set_factory(factory)
    try:
        yield calls
    finally:
        _transport.set_factory(None)
