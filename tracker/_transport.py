"""One POST per event: the Transport seam, and its implementation over a requests pool."""

from __future__ import annotations

import http.client
import io
import json
import logging
import re
import socket
import ssl
import time
from typing import Any, Callable, Optional, Protocol
from urllib.parse import urlsplit

import attrs
import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from tracker import _green
from tracker._config import Config, is_loopback
from tracker._event import CustomEvent
from tracker._retry import Kind, classify, parse_retry_after

logger = logging.getLogger("tracker")

MAX_BODY = 64 * 1024  # read no more of any answer; PX's are a few hundred bytes
MAX_MESSAGE = 300
MAX_INTERIM = 16  # 1xx answers skipped before the final one, at most
MAX_HEADER_LINES = 100


@attrs.frozen
class Result:
    """What one attempt came to; ``message`` is redacted and short."""

    kind: Kind
    status_code: Optional[int] = None
    message: Optional[str] = None
    retry_after: Optional[float] = None  # seconds, from a 429's Retry-After, uncapped


class Transport(Protocol):
    """Sends one event and says what came of it; thread-safe; never raises for what the
    server or the network did (that is a Result)."""

    def send(self, event: CustomEvent) -> Result: ...

    def close(self) -> None: ...


def encode(event: CustomEvent) -> bytes:
    """The request body: compact JSON, UTF-8 (track() proved that it encodes)."""
    return json.dumps(
        event.to_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False
    ).encode("utf-8")


_SPACE = re.compile(r"\s+")
_TAGS = re.compile(r"<(script|style)\b.*?</\1>|<[^>]*>", re.IGNORECASE | re.DOTALL)


def redact(text: str, secret: str) -> str:
    """``text`` on one line, without ``secret``, at most MAX_MESSAGE characters. Every
    text that may carry a server's bytes (answers, exception messages) goes through here
    before it is stored, logged or raised: a server may echo the key."""
    if secret:
        text = text.replace(secret, "***")
    text = _SPACE.sub(" ", text).strip()
    if secret:
        # Collapsing whitespace can join a key split across lines.
        text = text.replace(secret, "***")
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 3] + "..."
    return text


def server_message(body: bytes, secret: str) -> Optional[str]:
    """A short, single-line explanation from an error body in any of PX's shapes."""
    if not body:
        return None
    text = body.decode("utf-8", errors="replace")
    message: Optional[str] = None
    try:
        data: Any = json.loads(text)
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict):
        error = data.get("externalapierror")
        if isinstance(error, dict):
            parts = [str(error.get("message") or error.get("status") or "")]
            subs = error.get("subErrors")
            for sub in subs if isinstance(subs, list) else ():
                if isinstance(sub, dict) and sub.get("message"):
                    parts.append(str(sub["message"]))
            message = "; ".join(p for p in parts if p)
        else:
            for key in ("message", "error", "detail"):
                if isinstance(data.get(key), str):
                    message = data[key]
                    break
    if message is None:
        message = _TAGS.sub(" ", text) if "<" in text else text
    return redact(message, secret) or None


def interpret(
    status: int, retry_after: Optional[str], body: bytes, secret: str, now: float
) -> Result:
    """A complete answer as a Result: its status classified, a refusal's message
    redacted, a 429's Retry-After read (``now``: the wall-clock time, for dates)."""
    kind = classify(status)
    if kind is Kind.DELIVERED:
        return Result(kind, status)
    message = server_message(body, secret)
    if kind is Kind.RATE_LIMITED:
        return Result(kind, status, message, parse_retry_after(retry_after, now))
    return Result(kind, status, message)


def describe(exc: BaseException, secret: str) -> str:
    """An exception as a short redacted line: its type, and its text."""
    text = redact(str(exc), secret)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_certificate_error(exc: BaseException) -> bool:
    """Whether a verification failure is somewhere in the chain requests and urllib3
    wrapped around it."""
    pending: list[object] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        pending += [current.__cause__, current.__context__, getattr(current, "reason", None)]
        pending += current.args
    return False


# -- connections that bound the whole answer, skip interim answers, and keep server bytes
#    out of urllib3's log --------------------------------------------------------------------

# .deadline: time.monotonic() by which the answer must be in (per green thread, too)
_request = _green.ThreadLocal()


class _DeadlineReader(io.RawIOBase):
    """Socket reads that together end by a deadline: a server dripping its answer a byte
    at a time cannot hold a sender past ``timeout`` (a socket timeout is per read)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("no complete answer within the timeout")
        previous = self._sock.gettimeout()
        self._sock.settimeout(left if previous is None else min(previous, left))
        try:
            return self._sock.recv_into(buffer)
        finally:
            self._sock.settimeout(previous)


class _Response(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        deadline: Optional[float] = getattr(_request.get(), "deadline", None)
        if deadline is not None:
            self.fp.close()
            self.fp = io.BufferedReader(_DeadlineReader(sock, deadline))
        self.malformed_headers = False

    def _read_status(self) -> tuple[str, int, str]:
        # http.client skips 100 Continue only; 103 Early Hints (which proxies send) and
        # 102 would be taken as the final answer and desynchronise the connection.
        for _ in range(MAX_INTERIM):
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if not 102 <= status < 200:
                return version, status, reason
            for _ in range(MAX_HEADER_LINES):
                line = self.fp.readline(65537)
                if len(line) > 65536:
                    raise http.client.LineTooLong("header line")
                if line in (b"\r\n", b"\n", b""):
                    break
            else:
                raise http.client.HTTPException("too many header lines in an interim answer")
        raise http.client.HTTPException("too many interim (1xx) answers")

    def begin(self) -> None:
        super().begin()
        msg = self.msg
        if msg.defects or msg.get_payload():
            # Lines http.client could not parse. urllib3 would log them verbatim at WARNING
            # ("Failed to parse headers ... unparsed data"), server bytes that may echo the
            # key, into the application's log; we note them and move on.
            self.malformed_headers = True
            msg.defects.clear()
            msg.set_payload("")


class _Connection(HTTPConnection):
    response_class = _Response


class _TLSConnection(HTTPSConnection):
    response_class = _Response


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


class _Adapter(HTTPAdapter):
    """requests' adapter, with our connection classes in every pool it makes, and the
    TLS context of ``use_ssl_context`` when there is one."""

    ssl_context: Optional[ssl.SSLContext] = None

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}
        self._fit(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if proxy.lower().startswith(("http://", "https://")):
            manager.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}
        self._fit(manager)
        return manager

    def use_ssl_context(self, context: Optional[ssl.SSLContext]) -> None:
        """Open every later connection with ``context`` (None: urllib3's own)."""
        if context is None and self.ssl_context is None:
            return
        self.ssl_context = context
        for manager in (self.poolmanager, *self.proxy_manager.values()):
            self._fit(manager)
            manager.clear()  # pools keep the context they were made with

    def _fit(self, manager: Any) -> None:
        if self.ssl_context is None:
            manager.connection_pool_kw.pop("ssl_context", None)
        else:
            manager.connection_pool_kw["ssl_context"] = self.ssl_context


class RequestsTransport:
    """Sends one event per request over one keep-alive requests Session (one per
    process: a forked child builds its own)."""

    def __init__(self, config: Config, user_agent: str, pool_size: int) -> None:
        endpoint = config.endpoint
        self._secret = config.api_key
        self._clock = config.clock
        self._timeout = config.timeout
        session = requests.Session()
        session.headers.update(
            {
                "X-APTRINSIC-API-KEY": config.api_key,
                "Content-Type": "application/json",
                "User-Agent": user_agent,
            }
        )
        # Retries are ours (with backoff and pacing), never urllib3's hidden ones.
        adapter = _Adapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self._adapter = adapter
        self._ssl_class: Optional[type] = None  # ssl.SSLContext as of the last send
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        # What requests would look up in the environment on every request (proxies and
        # NO_PROXY, REQUESTS_CA_BUNDLE), looked up once. Proxies never apply to a loopback
        # server; a CA bundle does, from the environment or the ca_bundle option.
        settings = dict(session.merge_environment_settings(endpoint, {}, True, None, None))
        if is_loopback(urlsplit(endpoint).hostname or ""):
            settings["proxies"] = {}
        if config.ca_bundle is not None:
            settings["verify"] = config.ca_bundle
        # Off from here on: that also keeps ~/.netrc credentials out of PX's requests.
        session.trust_env = False
        self._options: dict[str, Any] = {
            "timeout": (config.timeout, config.timeout),
            "allow_redirects": False,
            "stream": True,
            "proxies": settings["proxies"],
            "verify": settings["verify"],
            "cert": settings["cert"],
        }
        # Every request is a copy of this one with its own body: preparing a request
        # (merging headers, cookies, hooks) per event cost a third of the client's CPU.
        self._template = session.prepare_request(requests.Request("POST", endpoint, data=b"{}"))
        self._session = session

    def send(self, event: CustomEvent) -> Result:
        if ssl.SSLContext is not self._ssl_class:  # first send, or ssl patched since
            self._ssl_class = ssl.SSLContext
            self._adapter.use_ssl_context(_green.ssl_context())
        body = encode(event)
        request = self._template.copy()
        request.body = body
        request.headers["Content-Length"] = str(len(body))
        secret = self._secret
        # The whole request, connect to last byte, ends within the timeout.
        local = _request.get()
        local.deadline = time.monotonic() + self._timeout
        try:
            with self._session.send(request, **self._options) as response:
                status = response.status_code
                retry_after = response.headers.get("Retry-After")
                original = getattr(response.raw, "_original_response", None)
                if getattr(original, "malformed_headers", False):
                    logger.debug("PX's answer (HTTP %d) had malformed header lines", status)
                try:
                    answer = response.raw.read(MAX_BODY, decode_content=True) or b""
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    return self._without_body(status, retry_after, exc)
        except requests.exceptions.SSLError as exc:
            if _is_certificate_error(exc):
                # Configuration, not weather: no retry will make the certificate valid.
                return Result(
                    Kind.REJECTED,
                    None,
                    "TLS certificate verification failed (set ca_bundle= or "
                    f"REQUESTS_CA_BUNDLE for a private CA): {describe(exc, secret)}",
                )
            return Result(Kind.RETRY, None, describe(exc, secret))
        except requests.RequestException as exc:
            # Connection refused/reset/closed, timeouts, bad status lines, broken chunked
            # bodies: the outcome is unknown or nothing was sent, so it may be retried.
            return Result(Kind.RETRY, None, describe(exc, secret))
        finally:
            local.deadline = None
        return interpret(status, retry_after, answer, secret, self._clock.time())

    def _without_body(self, status: int, retry_after: Optional[str], exc: BaseException) -> Result:
        """The status line came and the body did not: late (past the timeout), or broken
        off (closed, bad encoding)."""
        kind = classify(status)
        if kind is Kind.DELIVERED:
            return Result(kind, status)  # PX's word is the status
        if isinstance(exc, (socket.timeout, urllib3.exceptions.ReadTimeoutError)):
            # Late: the status says what PX decided; the body would only explain it.
            message = f"HTTP {status}; the body did not arrive within the timeout"
            if kind is Kind.RATE_LIMITED:
                seconds = parse_retry_after(retry_after, self._clock.time())
                return Result(kind, status, message, seconds)
            return Result(kind, status, message)
        # Broken off: a truncated answer is not a trustworthy refusal; retried like a
        # connection error.
        return Result(Kind.RETRY, status, describe(exc, self._secret))

    def close(self) -> None:
        self._session.close()


TransportFactory = Callable[[Config, str, int], Transport]
_factory_override: Optional[TransportFactory] = None


def build_transport(config: Config, user_agent: str, pool_size: int) -> Transport:
    """The requests transport, or what a test installed with ``tracker.testing``."""
    factory = _factory_override
    if factory is not None:
        return factory(config, user_agent, pool_size)
    return RequestsTransport(config, user_agent, pool_size)


def set_factory(factory: Optional[TransportFactory]) -> None:
    """Test hook: build every new tracker's transport with ``factory`` (None: requests)."""
    global _factory_override
    _factory_override = factory
