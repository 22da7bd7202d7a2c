"""The testing kit: FakePX, a real local PX endpoint with faults, and FakeClock.

    from tracker.testing import FakePX
    with FakePX(api_key="k") as px:
        t = Tracker("k", product_key="AP-1", base_url=px.url)
        t.track("u1", "signup"); t.flush()
        assert px.events[0]["eventName"] == "signup"

With pytest, the ``fake_px`` fixture (installed with the package) gives a started one.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import socket
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Mapping
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional, Union
from urllib.parse import urlsplit

import attrs
from requests.structures import CaseInsensitiveDict

from tracker._clock import Clock

__all__ = ["FakeClock", "FakePX", "RecordedRequest"]

EVENTS_PATH = "/v1/events/custom"
API_KEY_HEADER = "X-APTRINSIC-API-KEY"
USER_TYPES = ("LEAD", "USER", "VISITOR", "EMPTY_USER_TYPE")
REQUIRED = ("identifyId", "propertyKey", "userType", "eventName")
CONNECTION_THREAD = "fake-px-connection"
CREATED_BODY = {"body": {}, "statusCode": "CREATED", "statusCodeValue": 201}


def px_error(status: int, message: str, sub_errors: Iterable[str] = ()) -> dict[str, Any]:
    """An error body in the shape PX answers with."""
    return {
        "externalapierror": {
            "status": HTTPStatus(status).name if status in HTTPStatus._value2member_map_ else "",
            "message": message,
            "debugMessage": None,
            "subErrors": [{"message": text} for text in sub_errors],
        }
    }


def _default_body(status: int) -> dict[str, Any]:
    if 200 <= status < 300:
        return dict(CREATED_BODY, statusCode=HTTPStatus(status).name, statusCodeValue=status)
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    return px_error(status, phrase)


class Headers(CaseInsensitiveDict):  # type: ignore[type-arg]
    """Request headers, looked up case-insensitively; the API key is masked in the repr
    so a failing assertion never prints it."""

    def __repr__(self) -> str:
        shown = {k: ("***" if k.lower() == API_KEY_HEADER.lower() else v) for k, v in self.items()}
        return repr(shown)


@attrs.frozen
class RecordedRequest:
    """One request FakePX received and what it answered (``status`` None: it dropped the
    connection instead). Times are ``time.monotonic()`` values."""

    method: str
    path: str
    headers: Headers
    body: Any  # the parsed JSON body, or None when there was none or it was not JSON
    arrived_at: float
    answered_at: float
    status: Optional[int]
    raw_body: bytes = attrs.field(repr=False, default=b"")
    client_port: int = 0  # the client's source port: one per keep-alive connection


@attrs.define
class _Scripted:
    status: Optional[int]
    headers: Mapping[str, str]
    body: Any
    times: int


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], px: FakePX) -> None:
        self.px = px
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        # Nagle + delayed ACK would add ~40 ms to every keep-alive exchange.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.sockets_lock:
            self.open_sockets.add(sock)
        return sock, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # One thread per connection, named so that thread listings (and tests that count
        # threads) can tell FakePX's apart on every Python version.
        threading.current_thread().name = CONNECTION_THREAD
        super().process_request_thread(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-answer is normal for a test server; anything
        # else is a FakePX bug worth seeing.
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def close_all_connections(self) -> None:
        with self.sockets_lock:
            sockets = list(self.open_sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        self.server.px._handle(self)

    do_GET = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        pass  # FakePX reports through on_request, never on stderr


class FakePX:
    """A real HTTP/1.1 keep-alive server on 127.0.0.1 that answers like PX's
    ``POST /v1/events/custom``, with faults you can set at construction or any time later.

    Answers, in this order: a scripted answer (``respond_next``); a dropped connection
    (``drop_rate``); 404 for another path, 405 for another method; 401 for a missing or
    wrong key; 429 over ``rate_limit`` (a token bucket of that many requests per second
    with one second's worth of burst); 500 at ``fail_rate``; 400 for a body PX would
    refuse; else 201. ``latency`` (plus up to ``latency_jitter``) delays every answer.
    """

    def __init__(
        self,
        api_key: Optional[str] = None,
        *,
        port: int = 0,
        fail_rate: float = 0.0,
        rate_limit: Optional[float] = None,
        retry_after: Union[float, str, None] = 1,
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
        self._tokens = 0.0
        self._refilled = time.monotonic()
        self._host = host
        self._port = port
        self.api_key = api_key
        self.fail_rate = fail_rate
        self.rate_limit = rate_limit
        self.retry_after = retry_after
        self.latency = latency
        self.latency_jitter = latency_jitter
        self.drop_rate = drop_rate
        self.on_request = on_request
        self._events: list[dict[str, Any]] = []
        self._requests: list[RecordedRequest] = []
        self._script: deque[_Scripted] = deque()
        self._server: Optional[_Server] = None
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
        with self._lock:
            self._rate_limit = value
            self._tokens = max(1.0, value) if value else 0.0
            self._refilled = time.monotonic()

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
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self._events) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._arrived.wait(left)
            return True

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``n`` requests were answered (or dropped)."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self._requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._arrived.wait(left)
            return True

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
        self._server = _Server((self._host, self._port), self)
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

    def _take_token(self, now: float) -> bool:
        rate = self._rate_limit
        if not rate:
            return True
        burst = max(1.0, rate)
        self._tokens = min(burst, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

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
        """(status or None to drop, extra headers, body, latency), lock held."""
        rng = self._rng
        latency = self.latency + (rng.uniform(0, self.latency_jitter) if self.latency_jitter else 0)
        if self._script:
            scripted = self._script[0]
            scripted.times -= 1
            if scripted.times <= 0:
                self._script.popleft()
            body = scripted.body
            if body is None and scripted.status is not None:
                body = _default_body(scripted.status)
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
        if not self._take_token(now):
            return 429, self._retry_after_header(), px_error(429, "Rate limit exceeded"), latency
        if self.fail_rate and rng.random() < self.fail_rate:
            return 500, {}, px_error(500, "Internal server error"), latency
        problems = validate_event(raw)
        if problems:
            return 400, {}, px_error(400, "Validation failed", problems), latency
        return 201, {}, CREATED_BODY, latency

    def _handle(self, handler: _Handler) -> None:
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
            status, extra, body, latency = self._decide(method, path, headers, raw, arrived)
        if latency > 0:
            time.sleep(latency)
        parsed = _parse(raw)
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
        # Status line, headers and body in a single send (see _Server.get_request).
        handler.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)


def _parse(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def validate_event(raw: bytes) -> list[str]:
    """What PX would refuse in this request body (empty when it would accept it)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return ["body is not valid JSON"]
    if not isinstance(data, dict):
        return ["body must be a JSON object"]
    problems = [
        f"{name} must not be null or empty"
        for name in REQUIRED
        if not isinstance(data.get(name), str) or not data[name]
    ]
    if isinstance(data.get("userType"), str) and data["userType"] not in USER_TYPES:
        problems.append(f"userType must be one of {', '.join(USER_TYPES)}")
    if "date" in data and (isinstance(data["date"], bool) or not isinstance(data["date"], int)):
        problems.append("date must be an integer (epoch milliseconds)")
    for name in ("attributes", "globalContext"):
        if name in data and not isinstance(data[name], dict):
            problems.append(f"{name} must be an object")
    return problems


class FakeClock(Clock):
    """A clock that moves only when told to: ``advance(seconds)`` moves time forward and
    wakes every tracker waiting on it, so backoff, pauses and deadlines run instantly."""

    def __init__(self, start: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self._lock = threading.Lock()
        self._now = start
        self._wall_offset = wall - start
        self._conditions: weakref.WeakSet[threading.Condition] = weakref.WeakSet()

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    def time_ms(self) -> int:
        return int(self.time() * 1000)

    def wait(self, cond: threading.Condition, timeout: Optional[float]) -> None:
        if timeout is not None and timeout <= 0:
            return
        with self._lock:
            self._conditions.add(cond)
        # Real time only as a safety net: advance() or a state change wakes us.
        cond.wait(0.5)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
            conditions = list(self._conditions)
        for cond in conditions:
            with cond:
                cond.notify_all()
