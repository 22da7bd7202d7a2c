"""One POST per event: the Transport seam, and its implementation over a requests pool."""

from __future__ import annotations

import json
import logging
import re
import socket
import ssl
import time
from typing import Any, Callable, Optional, Protocol, cast
from urllib.parse import urlsplit

import attrs
import requests
import urllib3

from tracker import _green
from tracker._config import Config, is_loopback
from tracker._event import CustomEvent
from tracker._http import Adapter, as_requests_error, request_state
from tracker._retry import Kind, classify, parse_retry_after

logger = logging.getLogger("tracker")

MAX_BODY = 64 * 1024  # read no more of any answer; PX's are a few hundred bytes
MAX_MESSAGE = 300


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

    def send(self, event: CustomEvent, written: Optional[Callable[[], None]] = None) -> Result:
        """``written`` is called once the request has left (its last byte written), before
        the answer: the pacer spaces requests by when they left."""
        ...

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
        self._template = template
        self._proxies: dict[str, str] = settings["proxies"]
        self._verify: Any = settings["verify"]
        self._cert: Any = settings["cert"]
        # The path, or the absolute URL through a plain-http proxy.
        self._url = adapter.request_url(template, self._proxies)
        self._retries = adapter.max_retries  # Retry(0, read=False): none
        self._timeouts = urllib3.Timeout(connect=config.timeout, read=config.timeout)
        self._adapter = adapter
        self._session = session
        self._pool: Optional[urllib3.HTTPConnectionPool] = None
        self._ssl_class: Optional[type] = None  # ssl.SSLContext as of the last send

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
        # The whole request, connect to last byte, ends within the timeout.
        state = request_state.get()
        state.deadline = time.monotonic() + self._timeout
        state.written = written
        try:
            try:
                response = self._connection_pool().urlopen(
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
                mapped = as_requests_error(exc)
                if mapped is exc:
                    raise
                raise mapped from exc
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
            state.deadline = state.written = None
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
        self._pool = None
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
