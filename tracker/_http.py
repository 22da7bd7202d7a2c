"""The HTTP layer under the transport: requests' adapter and urllib3 pools with connections
that bound the whole answer, skip interim answers and keep server bytes out of urllib3's
log; and what requests would have raised for what urllib3 raised."""

from __future__ import annotations

import http.client
import io
import socket
import ssl
import time
from typing import Any, Callable, Optional

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from tracker import _green

MAX_INTERIM = 16  # 1xx answers skipped before the final one, at most
MAX_HEADER_LINES = 100

# .deadline: time.monotonic() by which the answer must be in; .written: called once the
# request has left (per green thread, too)
request_state = _green.ThreadLocal()


#: A read may end this long (seconds) past the deadline: the socket's timeout is shortened
#: only once the deadline is nearer than that, so an answer read at once costs no
#: settimeout() (an ioctl, and a GIL hand-off) of ours.
DEADLINE_SLACK = 0.001


def shorten_timeout(sock: Any, deadline: float, timeout: Optional[float]) -> Optional[float]:
    """Before a read that must end by ``deadline`` (time.monotonic()) on ``sock``, whose
    timeout is ``timeout``: socket.timeout once the deadline has passed; else the socket's
    timeout set to the time left when that is shorter by more than DEADLINE_SLACK. The
    socket's timeout now."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise socket.timeout("no complete answer within the timeout")
    if timeout is None or left < timeout - DEADLINE_SLACK:
        sock.settimeout(left)
        return left
    return timeout


class _DeadlineReader(io.RawIOBase):
    """Socket reads that together end by a deadline: a server dripping its answer a byte
    at a time cannot hold a sender past ``timeout`` (a socket timeout is per read)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline
        self._timeout = sock.gettimeout()  # what urllib3 just set it to: see getresponse

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        # Left as it is afterwards: urllib3 sets it before every use of the socket.
        self._timeout = shorten_timeout(self._sock, self._deadline, self._timeout)
        return self._sock.recv_into(buffer)


class _DeadlineSocket:
    """What ``http.client.HTTPResponse`` is given instead of the socket: it only calls
    ``makefile``, which gives it our reader (no socket file made only to be closed)."""

    __slots__ = ("_deadline", "_sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))


class _Response(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        deadline: Optional[float] = getattr(request_state.get(), "deadline", None)
        if deadline is not None:
            sock = _DeadlineSocket(sock, deadline)  # type: ignore[assignment]
        super().__init__(sock, *args, **kwargs)
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


def _read_timeout(connection: HTTPConnection) -> None:
    """Before urllib3's ``getresponse`` sets the socket's timeout (for every answer): set
    what it sets to the time left to the request's deadline, so the first read needs
    no settimeout() of ours. The request has left by then: say so to who asked."""
    state = request_state.get()
    written: Optional[Callable[[], None]] = getattr(state, "written", None)
    if written is not None:
        state.written = None
        written()
    deadline: Optional[float] = getattr(state, "deadline", None)
    if deadline is not None:
        # Never 0 (a non-blocking socket); at or past the deadline, the reader raises.
        connection.timeout = max(deadline - time.monotonic(), DEADLINE_SLACK)


class _Connection(HTTPConnection):
    response_class = _Response

    def getresponse(self) -> urllib3.HTTPResponse:  # type: ignore[override]
        _read_timeout(self)
        return super().getresponse()


class _TLSConnection(_Connection, HTTPSConnection):
    """urllib3's TLS connection with ours' answer handling (``_Connection`` comes first,
    so its ``getresponse`` wraps HTTPSConnection's)."""


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


class Adapter(HTTPAdapter):
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

    def use_ssl_context(self, context: Optional[ssl.SSLContext]) -> bool:
        """Open every later connection with ``context`` (None: urllib3's own). True when
        that changed the pools (the ones made before are let go)."""
        if context is None and self.ssl_context is None:
            return False
        self.ssl_context = context
        for manager in (self.poolmanager, *self.proxy_manager.values()):
            self._fit(manager)
            manager.clear()  # pools keep the context they were made with
        return True

    def _fit(self, manager: Any) -> None:
        if self.ssl_context is None:
            manager.connection_pool_kw.pop("ssl_context", None)
        else:
            manager.connection_pool_kw["ssl_context"] = self.ssl_context


_errors = urllib3.exceptions
_requests_errors = requests.exceptions


def as_requests_error(exc: Exception) -> Exception:
    """What ``HTTPAdapter.send`` raises for what ``urlopen`` raised, so that messages
    (``stats().last_errors``, ``DeliveryError``, logs) read as they did through
    ``Session.send``: ``ConnectionError: ...``, ``ReadTimeout: ...``. An error it does not
    wrap comes back as it is."""
    if isinstance(exc, (_errors.ProtocolError, OSError)):
        return _requests_errors.ConnectionError(exc)
    if isinstance(exc, _errors.MaxRetryError):
        reason = exc.reason
        if isinstance(reason, _errors.ConnectTimeoutError) and not isinstance(
            reason, _errors.NewConnectionError
        ):
            return _requests_errors.ConnectTimeout(exc)
        if isinstance(reason, _errors.ResponseError):
            return _requests_errors.RetryError(exc)
        if isinstance(reason, _errors.ProxyError):
            return _requests_errors.ProxyError(exc)
        if isinstance(reason, _errors.SSLError):
            return _requests_errors.SSLError(exc)
        return _requests_errors.ConnectionError(exc)
    if isinstance(exc, _errors.ClosedPoolError):
        return _requests_errors.ConnectionError(exc)
    if isinstance(exc, _errors.ProxyError):
        return _requests_errors.ProxyError(exc)
    if isinstance(exc, _errors.SSLError):
        return _requests_errors.SSLError(exc)
    if isinstance(exc, _errors.ReadTimeoutError):
        return _requests_errors.ReadTimeout(exc)
    if isinstance(exc, _errors.InvalidHeader):
        return _requests_errors.InvalidHeader(exc)
    return exc
