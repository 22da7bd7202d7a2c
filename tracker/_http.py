"""The HTTP layer under the transport: requests' adapter and urllib3 pools with connections
that bound the whole answer, skip interim answers and keep server bytes out of urllib3's
log; and what requests would have raised for what urllib3 raised."""

from __future__ import annotations

import http.client
import io
import socket
import threading
import time
from typing import Any, Optional

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

MAX_INTERIM = 16  # 1xx answers skipped before the final one, at most
MAX_HEADER_LINES = 100

request_state = threading.local()  # .deadline: time.monotonic() by which the answer must be in


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
        deadline: Optional[float] = getattr(request_state, "deadline", None)
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


class Adapter(HTTPAdapter):
    """requests' adapter, with our connection classes in every pool it makes."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if proxy.lower().startswith(("http://", "https://")):
            manager.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}
        return manager


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
