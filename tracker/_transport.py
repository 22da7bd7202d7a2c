"""One POST per event: the Transport seam, and its implementation over a requests pool."""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import time
from typing import Any, Callable, NoReturn, Optional, Protocol, cast
from urllib.parse import urlsplit

import requests
import urllib3
from urllib3.util import parse_url

from tracker import _green, _wire
from tracker._answers import (
    Result,
    describe,
    encode,
    interpret,
    is_certificate_error,
)
from tracker._config import Config, is_loopback
from tracker._event import CustomEvent
from tracker._http import Adapter, as_requests_error, request_state
from tracker._retry import Kind, classify, parse_retry_after

logger = logging.getLogger("tracker")

MAX_BODY = 64 * 1024  # read no more of any answer; PX's are a few hundred bytes


class Transport(Protocol):
    """Sends one event and says what came of it; thread-safe; never raises for what the
    server or the network did (that is a Result)."""

    def send(self, event: CustomEvent, written: Optional[Callable[[], None]] = None) -> Result:
        """``written`` is called once the request has left (its last byte written), before
        the answer: the pacer spaces requests by when they left."""
        ...

    def close(self) -> None: ...


class RequestsTransport:
    """Sends one event per request over requests' keep-alive pool (one per process: a
    forked child builds its own).

    The pool is the one ``Session.send`` would use, reached the way requests' adapter
    reaches it (``get_connection_with_tls_context``, ``cert_verify``, ``urlopen`` with
    its arguments: no redirects, no retries of urllib3's own). What is left out is the
    per-request Session machinery the transport never needed: hooks, cookie jars, redirect
    resolution, environment look-ups (done once, below), the Response object. That was
    about two fifths of the client's CPU per event."""

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
        adapter = Adapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        # What requests would look up in the environment on every request (proxies and
        # NO_PROXY, REQUESTS_CA_BUNDLE), looked up once. Proxies never apply to a loopback
        # server; a CA bundle does, from the environment or the ca_bundle option.
        settings: dict[str, Any] = dict(
            session.merge_environment_settings(endpoint, {}, True, None, None)
        )
        if is_loopback(urlsplit(endpoint).hostname or ""):
            settings["proxies"] = {}
        if config.ca_bundle is not None:
            settings["verify"] = config.ca_bundle
        # Off from here on: that also keeps ~/.netrc credentials out of PX's requests.
        session.trust_env = False
        # Every request is this one with its own body: its headers (the Session's, requests'
        # defaults) merged once; urllib3 adds Content-Length.
        template = session.prepare_request(requests.Request("POST", endpoint, data=b"{}"))
        self._headers = {
            name: value
            for name, value in template.headers.items()
            if name.lower() != "content-length"
        }
        # PX's answers are a few hundred bytes: not worth a decompressor per answer.
        self._headers["Accept-Encoding"] = "identity"
        self._template = template
        self._proxies: dict[str, str] = settings["proxies"]
        self._verify: Any = settings["verify"]
        self._cert: Any = settings["cert"]
        # The path, or the absolute URL through a plain-http proxy.
        self._url = adapter.request_url(template, self._proxies)
        self._head = self._request_head(endpoint)
        self._retries = adapter.max_retries  # Retry(0, read=False): none
        self._timeouts = urllib3.Timeout(connect=config.timeout, read=config.timeout)
        self._adapter = adapter
        self._session = session
        self._pool: Optional[urllib3.HTTPConnectionPool] = None
        self._ssl_class: Optional[type] = None  # ssl.SSLContext as of the last send

    def _request_head(self, endpoint: str) -> Optional[tuple[bytes, bytes]]:
        """What every request on an open connection is made of, around its Content-Length
        and its body, as http.client writes it through urllib3: the request line, Host
        (without a default port), Content-Length, then our header lines. None when they
        cannot be written as they are (the exchange is then urllib3's)."""
        if not self._url.startswith("/"):
            return None  # absolute form, through a plain-http proxy
        url = parse_url(endpoint)
        default = 443 if url.scheme == "https" else 80
        host = (url.host or "").rstrip(".")  # as urllib3 connects and names it
        if url.port is not None and url.port != default:
            host = f"{host}:{url.port}"
        fields = "".join(f"{name}: {value}\r\n" for name, value in self._headers.items())
        try:
            before = f"POST {self._url} HTTP/1.1\r\nHost: {host}\r\n".encode("latin-1")
            return before, (fields + "\r\n").encode("latin-1")
        except UnicodeEncodeError:
            return None

    def _connection_pool(self) -> urllib3.HTTPConnectionPool:
        """The adapter's pool for the endpoint (through the proxy, if any), set up as
        ``HTTPAdapter.send`` sets it up. Looked up once: one endpoint, and a pool manager
        that keeps one pool, so it stays the same pool until ``close()``."""
        pool = self._pool
        if pool is None:
            adapter, template = self._adapter, self._template
            pool = cast(
                urllib3.HTTPConnectionPool,
                adapter.get_connection_with_tls_context(
                    template, self._verify, proxies=self._proxies, cert=self._cert
                ),
            )
            # The CA bundle (certifi's for verify=True) and the client certificate.
            adapter.cert_verify(  # type: ignore[no-untyped-call]
                pool, template.url, self._verify, self._cert
            )
            self._pool = pool
        return pool

    def send(self, event: CustomEvent, written: Optional[Callable[[], None]] = None) -> Result:
        if ssl.SSLContext is not self._ssl_class:  # first send, or ssl patched since
            self._ssl_class = ssl.SSLContext
            if self._adapter.use_ssl_context(_green.ssl_context()):
                self._pool = None
        body = encode(event)
        secret = self._secret
        head_parts = self._head
        try:
            try:
                pool = self._connection_pool()
                # urllib3 polls the connection it hands out: one closed meanwhile, or
                # with bytes no request asked for, is closed here (not reused).
                conn = None if head_parts is None else pool._get_conn()
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                _raise_as_requests_error(exc)
            if conn is not None and head_parts is not None:
                if getattr(conn, "sock", None) is not None:
                    return self._reuse(pool, conn, head_parts, body, written)
                # A new connection (or one urllib3 found closed): urllib3 opens it
                # (proxy tunnel, TLS) and makes the first request.
                pool._put_conn(conn)
            return self._through_urllib3(pool, body, written)
        except requests.exceptions.SSLError as exc:
            if is_certificate_error(exc):
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

    def _through_urllib3(
        self,
        pool: urllib3.HTTPConnectionPool,
        body: bytes,
        written: Optional[Callable[[], None]],
    ) -> Result:
        """The request through urllib3's ``urlopen``, which opens the connection if it
        must; its errors raised as requests' (see ``send``)."""
        # The whole request, connect to last byte, ends within the timeout.
        state = request_state.get()
        state.deadline = time.monotonic() + self._timeout
        state.written = written
        try:
            try:
                response = pool.urlopen(
                    "POST",
                    self._url,
                    body=body,
                    headers=self._headers,
                    redirect=False,
                    assert_same_host=False,
                    preload_content=False,
                    decode_content=False,
                    retries=self._retries,
                    timeout=self._timeouts,
                    chunked=False,
                )
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                _raise_as_requests_error(exc)
            try:
                status = response.status
                retry_after = response.headers.get("Retry-After")
                original = getattr(response, "_original_response", None)
                if getattr(original, "malformed_headers", False):
                    logger.debug("PX's answer (HTTP %d) had malformed header lines", status)
                try:
                    answer = response.read(MAX_BODY, decode_content=True) or b""
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    return self._without_body(status, retry_after, exc)
            finally:
                # As requests' Response.close(): an answer read to its end has given its
                # connection back already; one cut at MAX_BODY closes it.
                response.close()
                response.release_conn()
        finally:
            state.deadline = state.written = None
        return interpret(status, retry_after, answer, self._secret, self._clock.time())

    def _reuse(
        self,
        pool: urllib3.HTTPConnectionPool,
        conn: Any,
        head_parts: tuple[bytes, bytes],
        body: bytes,
        written: Optional[Callable[[], None]],
    ) -> Result:
        """The request on an open keep-alive connection, exchanged by ``_wire``; the
        connection goes back to the pool, closed unless the answer left it reusable."""
        reuse = False
        try:
            before, after = head_parts
            request = b"%sContent-Length: %d\r\n%s%s" % (before, len(body), after, body)
            try:
                reader, head = _wire.exchange(conn.sock, request, self._timeout, written)
            except (OSError, http.client.HTTPException) as exc:
                return Result(Kind.RETRY, None, describe(self._exchange_error(exc), self._secret))
            if head.malformed:
                logger.debug("PX's answer (HTTP %d) had malformed header lines", head.status)
            try:
                answer, reuse = _wire.read_body(reader, head, MAX_BODY)
            except socket.timeout as exc:
                return self._without_body(head.status, head.retry_after, exc)
            except (OSError, http.client.HTTPException) as exc:
                # As urllib3 reports a body broken off.
                broken = urllib3.exceptions.ProtocolError(f"Connection broken: {exc!r}", exc)
                return self._without_body(head.status, head.retry_after, broken)
        finally:
            try:
                if not reuse:
                    conn.close()
            finally:
                pool._put_conn(conn)
        return interpret(head.status, head.retry_after, answer, self._secret, self._clock.time())

    def _exchange_error(self, exc: BaseException) -> Exception:
        """What urllib3 and requests would have made of an exchange's error (the same
        names in messages, whichever path the request took)."""
        if isinstance(exc, socket.timeout):
            return requests.exceptions.ReadTimeout(
                f"Read timed out. (read timeout={self._timeout})"
            )
        if isinstance(exc, ssl.SSLError):
            return requests.exceptions.SSLError(exc)
        return requests.exceptions.ConnectionError(
            urllib3.exceptions.ProtocolError("Connection aborted.", exc)
        )

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
        self._pool = None
        self._session.close()


def _raise_as_requests_error(exc: Exception) -> NoReturn:
    """Raise what ``HTTPAdapter.send`` would have raised for what urllib3 raised."""
    mapped = as_requests_error(exc)
    if mapped is exc:
        raise exc
    raise mapped from exc


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
