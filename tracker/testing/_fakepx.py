"""FakePX: a real local PX events endpoint that records what arrived and injects faults."""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections import deque
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Callable, Optional, Union
from urllib.parse import urlsplit

import attrs

from tracker.testing._limits import Limiter, check_limit, make_limiter
from tracker.testing._server import Handler, Server
from tracker.testing._wire import (
    API_KEY_HEADER,
    CREATED_BODY,
    EVENTS_PATH,
    Headers,
    RecordedRequest,
    default_body,
    parse_json,
    px_error,
    validate_event,
)


@attrs.define
class _Scripted:
    status: Optional[int]
    headers: Mapping[str, str]
    body: Any
    times: int


class FakePX:
    """A real HTTP/1.1 keep-alive server on 127.0.0.1 that answers like PX's
    ``POST /v1/events/custom``, with faults you can set at construction or any time later.

    Answers, in this order: a scripted answer (``respond_next``); a dropped connection
    (``drop_rate``); 404 for another path, 405 for another method; 401 for a missing or
    wrong key; 429 over ``rate_limit`` (requests per second, as decided by ``limiter``);
    500 at ``fail_rate``; 400 for a body PX would refuse; else 201. ``latency`` (plus up
    to ``latency_jitter``) delays every answer.

    ``limiter="token_bucket"`` (the default) is a bucket of ``burst + 1`` tokens refilled
    at ``rate_limit`` per second; ``burst=None`` gives one second's worth. ``"leaky"``
    applies nginx's ``limit_req`` at ``rate_limit`` r/s with ``burst`` (None: 0) in
    nginx's integer arithmetic at millisecond resolution: a request over the burst gets
    429, one within it is answered at once (``delay=False``, nginx's ``nodelay``) or
    held until it conforms to the rate (``delay=True``, nginx's default; see
    ``RecordedRequest.delayed``). One limit covers every request FakePX answers. Setting
    any of ``rate_limit``, ``limiter``, ``burst``, ``delay`` while running starts the
    limiter afresh (a full bucket, no excess).
    """

    def __init__(
        self,
        api_key: Optional[str] = None,
        *,
        port: int = 0,
        fail_rate: float = 0.0,
        rate_limit: Optional[float] = None,
        retry_after: Union[float, str, None] = 1,
        limiter: str = "token_bucket",
        burst: Optional[int] = None,
        delay: bool = False,
        latency: float = 0.0,
        latency_jitter: float = 0.0,
        drop_rate: float = 0.0,
        seed: Optional[int] = None,
        on_request: Optional[Callable[[RecordedRequest], object]] = None,
        host: str = "127.0.0.1",
    ) -> None:
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._rng = random.Random(seed)
        self._limiter: Optional[Limiter] = None
        self._set_limit(rate_limit, limiter, burst, delay)
        self._limiter_held = 0.0  # how long the last _decide() had the limiter hold it
        self._host = host
        self._port = port
        self.api_key = api_key
        self.fail_rate = fail_rate
        self.retry_after = retry_after
        self.latency = latency
        self.latency_jitter = latency_jitter
        self.drop_rate = drop_rate
        self.on_request = on_request
        self._events: list[dict[str, Any]] = []
        self._requests: list[RecordedRequest] = []
        self._script: deque[_Scripted] = deque()
        self._server: Optional[Server] = None
        self._thread: Optional[threading.Thread] = None
        self._open = threading.Event()
        self._open.set()
        self._in_progress = 0

    # -- faults, changeable while running ---------------------------------------------------

    @property
    def rate_limit(self) -> Optional[float]:
        return self._rate_limit

    @rate_limit.setter
    def rate_limit(self, value: Optional[float]) -> None:
        self._set_limit(value, self._limiter_kind, self._burst, self._delay)

    @property
    def limiter(self) -> str:
        """``"token_bucket"`` or ``"leaky"`` (nginx ``limit_req``)."""
        return self._limiter_kind

    @limiter.setter
    def limiter(self, value: str) -> None:
        self._set_limit(self._rate_limit, value, self._burst, self._delay)

    @property
    def burst(self) -> Optional[int]:
        """Requests that may arrive at once beyond the first; None: the limiter's default."""
        return self._burst

    @burst.setter
    def burst(self, value: Optional[int]) -> None:
        self._set_limit(self._rate_limit, self._limiter_kind, value, self._delay)

    @property
    def delay(self) -> bool:
        """Leaky bucket only: hold requests within the burst instead of answering at once."""
        return self._delay

    @delay.setter
    def delay(self, value: bool) -> None:
        self._set_limit(self._rate_limit, self._limiter_kind, self._burst, value)

    def _set_limit(
        self, rate_limit: Optional[float], limiter: str, burst: Optional[int], delay: bool
    ) -> None:
        check_limit(rate_limit, limiter, burst, delay)
        fresh = make_limiter(rate_limit, limiter, burst, delay)
        with self._lock:
            self._rate_limit, self._limiter_kind, self._burst, self._delay = (
                rate_limit,
                limiter,
                burst,
                delay,
            )
            self._limiter = fresh

    def respond_next(
        self,
        status: Optional[int],
        *,
        headers: Optional[Mapping[str, str]] = None,
        body: Any = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests with ``status`` (None: drop the connection).

        ``body`` may be a dict (sent as JSON), str or bytes; None gives PX's body for that
        status. Scripted answers queue up in order.
        """
        with self._lock:
            self._script.append(_Scripted(status, dict(headers or {}), body, times))

    def hold(self) -> None:
        """Stall: requests that arrive from now on wait, unanswered, until ``release()``
        (or ``stop()``). For "PX hangs" scenarios and for keeping events in flight."""
        self._open.clear()

    def release(self) -> None:
        """Let held requests (and later ones) be answered."""
        self._open.set()

    # -- what arrived ---------------------------------------------------------------------

    @property
    def in_progress(self) -> int:
        """Requests that arrived and are not answered yet (held or delayed)."""
        with self._lock:
            return self._in_progress

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakePX is not started")
        return f"http://{self._host}:{self._server.server_address[1]}"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server else self._port

    @property
    def events(self) -> list[dict[str, Any]]:
        """Accepted events (answered 2xx) in arrival order, in wire form (a copy)."""
        with self._lock:
            return list(self._events)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, with the status answered (a copy)."""
        with self._lock:
            return list(self._requests)

    def find(self, event_name: str) -> list[dict[str, Any]]:
        """Accepted events with this ``eventName``."""
        return [e for e in self.events if e.get("eventName") == event_name]

    def event_ids(self) -> list[str]:
        """``eventId`` of every accepted event, duplicates included."""
        return [e.get("eventId", "") for e in self.events]

    def wait_for(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``n`` events were accepted; False after ``timeout``."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self._events) >= n, timeout)

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``n`` requests were answered (or dropped)."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self._requests) >= n, timeout)

    def clear(self) -> None:
        """Forget recorded events and requests and pending scripted answers."""
        with self._lock:
            self._events.clear()
            self._requests.clear()
            self._script.clear()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakePX:
        if self._server is not None:
            return self
        self._server = Server((self._host, self._port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-px",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._open.set()
        server.shutdown()
        server.close_all_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakePX:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self._server else "stopped"
        return f"<FakePX {where} events={len(self._events)} requests={len(self._requests)}>"

    # -- answering ---------------------------------------------------------------------------

    def _retry_after_header(self) -> dict[str, str]:
        value = self.retry_after
        if value is None:
            return {}
        if value == "date":
            # HTTP-dates have whole seconds: a date at least one second ahead.
            return {"Retry-After": formatdate(math.floor(time.time()) + 2, usegmt=True)}
        number = float(value)
        return {"Retry-After": str(int(number)) if number.is_integer() else str(number)}

    def _decide(
        self, method: str, path: str, headers: Headers, raw: bytes, now: float
    ) -> tuple[Optional[int], dict[str, str], Any, float]:
        """(status or None to drop, extra headers, body, seconds to wait before answering),
        lock held. ``now`` is the time of the decision, not of arrival: decisions are taken
        in lock order, so the limiter sees time move forward only (and a request that
        ``hold()`` kept counts when released). Subclasses in the tests override this; the
        wait includes the limiter's hold, also noted in ``_limiter_held``."""
        rng = self._rng
        latency = self.latency + (rng.uniform(0, self.latency_jitter) if self.latency_jitter else 0)
        if self._script:
            scripted = self._script[0]
            scripted.times -= 1
            if scripted.times <= 0:
                self._script.popleft()
            body = scripted.body
            if body is None and scripted.status is not None:
                body = default_body(scripted.status)
            return scripted.status, dict(scripted.headers), body, latency
        if self.drop_rate and rng.random() < self.drop_rate:
            return None, {}, None, latency
        if path != EVENTS_PATH:
            return 404, {}, px_error(404, f"No handler found for {method} {path}"), latency
        if method != "POST":
            return 405, {"Allow": "POST"}, px_error(405, f"Method {method} not allowed"), latency
        key = headers.get(API_KEY_HEADER)
        if not key or (self.api_key is not None and key != self.api_key):
            return 401, {}, px_error(401, "Authentication failed: invalid API key"), latency
        held = self._limiter.admit(now) if self._limiter is not None else 0.0
        if held is None:
            return 429, self._retry_after_header(), px_error(429, "Rate limit exceeded"), latency
        # Like nginx, the limiter holds the request first; the server's latency comes after.
        self._limiter_held = held
        latency += held
        if self.fail_rate and rng.random() < self.fail_rate:
            return 500, {}, px_error(500, "Internal server error"), latency
        problems = validate_event(raw)
        if problems:
            return 400, {}, px_error(400, "Validation failed", problems), latency
        return 201, {}, CREATED_BODY, latency

    def _handle(self, handler: Handler) -> None:
        arrived = time.monotonic()
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length > 0 else b""
        headers = Headers(handler.headers.items())
        path = urlsplit(handler.path).path
        method = handler.command
        with self._lock:
            self._in_progress += 1
        self._open.wait()
        with self._lock:
            self._limiter_held = 0.0  # an overriding _decide() may answer before the limiter
            decided = self._decide(method, path, headers, raw, time.monotonic())
            status, extra, body, latency = decided
            held = self._limiter_held
        if latency > 0:
            time.sleep(latency)
        parsed = parse_json(raw)
        with self._lock:
            self._in_progress -= 1
            record = RecordedRequest(
                method,
                path,
                headers,
                parsed,
                arrived,
                time.monotonic(),
                status,
                raw,
                handler.client_address[1],
                held,
            )
            self._requests.append(record)
            if status is not None and 200 <= status < 300 and isinstance(parsed, dict):
                self._events.append(parsed)
            self._arrived.notify_all()
        if self.on_request is not None:
            self.on_request(record)
        if status is None:
            handler.close_connection = True  # no answer at all: the client sees EOF
            return
        if isinstance(body, (dict, list)):
            payload = json.dumps(body).encode()
            extra.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            payload = body.encode()
            extra.setdefault("Content-Type", "text/plain; charset=utf-8")
        else:
            payload = body or b""
        if handler.headers.get("Connection", "").lower() == "close":
            handler.close_connection = True
        reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        head = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(payload)}"]
        head += [f"{name}: {value}" for name, value in extra.items()]
        if handler.close_connection:
            head.append("Connection: close")
        # Status line, headers and body in a single send (see Server.get_request).
        handler.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
