"""A raw-socket server on 127.0.0.1 for answers FakePX cannot give: bytes that are not
HTTP, interim answers, bodies that drip, headers no parser accepts, TLS with a private CA.

One request per connection (``keep_alive=True``: as many as the client sends, until a
behaviour other than ok, early_hints or bad_headers), answered by the next scripted
behaviour (then ``default``):

ok              201 with PX's body, then close (kept open with ``keep_alive``)
stall_silent    read the request, answer nothing until stopped (PX hangs)
stall_mid_body  send a 503's headers and 1 byte of its 100-byte body, then nothing
close_mid_body  send the same, then close the connection
not_http        a first line that is not HTTP, echoing the API key the request carried
early_hints     103 Early Hints (with a Link header), then 201
drip_201        201's status line and headers, then its body one byte per DRIP seconds
drip_503        the same with a 503
bad_zone_429    429 with a Retry-After HTTP-date whose zone offset is out of range
overflow_zone_429  the same with an offset past a C int
bad_headers     201 whose header block holds lines no parser accepts, echoing the key
ok_then_stray   201 (connection kept), then 50 ms later a second 201 nobody asked for
ok_then_close   201 (connection kept), then 50 ms later the server closes it
rate_limited    429 with Retry-After: 0 (connection kept)

Every answer is written by the server's own threads; the test never sleeps.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional

import attrs
import pytest

CREATED = b'{"body":{},"statusCode":"CREATED","statusCodeValue":201}'
DRIP = 0.5  # seconds between two bytes of a dripping body
DRIP_LENGTH = 100  # bytes of a dripping body: 50 s in all, far past any test's timeout
# Retry-After HTTP-dates whose zone offset is out of range: past a day (ValueError in
# the parser), past a C int (OverflowError).
BAD_ZONE_DATES = {
    "bad_zone_429": "Wed, 21 Oct 2015 07:28:00 +9999",
    "overflow_zone_429": "Wed, 21 Oct 2015 07:28:00 +99999999999999",
}


@attrs.frozen
class Seen:
    behaviour: str
    event_id: str
    key: str  # the X-APTRINSIC-API-KEY the request carried
    arrived_at: float  # time.monotonic() when the whole request was in
    connection: int = 0  # which connection it came on: 1, 2, ... in order of accepting
    head: bytes = b""  # the request line and header lines


@attrs.define
class Request:
    head: bytes
    body: bytes
    key: str


class RawServer:
    """Accepts on 127.0.0.1 in a thread of its own, one thread per connection."""

    def __init__(
        self,
        script: list[str],
        default: str = "ok",
        tls: Optional[ssl.SSLContext] = None,
        keep_alive: bool = False,
    ) -> None:
        self.script = list(script)
        self.default = default
        self.keep_alive = keep_alive
        self.done = threading.Event()  # set once ok_then_stray/ok_then_close did the "then"
        self._connections = 0
        self.seen: list[Seen] = []
        self._tls = tls
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(32)
        self._listener.settimeout(0.05)
        self._threads: list[threading.Thread] = []
        self.port = int(self._listener.getsockname()[1])
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self._accepter = threading.Thread(target=self._accept, name="raw-server", daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        conn = raw
        with contextlib.ExitStack() as stack:
            stack.enter_context(raw)
            raw.settimeout(10)
            if self._tls is not None:
                try:
                    conn = self._tls.wrap_socket(raw, server_side=True)
                except (OSError, ssl.SSLError):
                    return  # the client refused our certificate
                stack.enter_context(conn)
            with self._lock:
                self._connections += 1
                number = self._connections
            while True:
                request = _read_request(conn)
                if request is None:
                    return
                with self._lock:
                    behaviour = self.script.pop(0) if self.script else self.default
                    try:
                        event_id = str(json.loads(request.body).get("eventId", ""))
                    except (ValueError, AttributeError):
                        event_id = ""
                    self.seen.append(
                        Seen(
                            behaviour,
                            event_id,
                            request.key,
                            time.monotonic(),
                            number,
                            request.head,
                        )
                    )
                try:
                    BEHAVIOURS[behaviour](self, conn, request)
                except OSError:
                    return
                if not self.keep_alive or behaviour not in KEPT_OPEN:
                    return

    def wait(self, seconds: Optional[float] = None) -> bool:
        """Wait until stopped (or ``seconds``); True when stopped."""
        return self._stop.wait(seconds)

    def behaviours(self) -> list[str]:
        with self._lock:
            return [s.behaviour for s in self.seen]

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        self._accepter.join(5)
        for thread in self._threads:
            thread.join(5)


def _read_request(conn: socket.socket) -> Optional[Request]:
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        match = re.search(rb"(?i)content-length:\s*(\d+)", head)
        length = int(match.group(1)) if match else 0
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            body += chunk
    except OSError:
        return None
    key = re.search(rb"(?im)^x-aptrinsic-api-key:\s*(.*?)\r?$", head)
    return Request(head, body, key.group(1).decode("latin-1") if key else "")


def _created(server: RawServer, extra: bytes = b"") -> bytes:
    close = b"" if server.keep_alive else b"Connection: close\r\n"
    head = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n%s%s" % (extra, close)
    return head + b"Content-Length: %d\r\n\r\n%s" % (len(CREATED), CREATED)


def _ok(server: RawServer, conn: socket.socket, request: Request) -> None:
    conn.sendall(_created(server))


def _stall_silent(server: RawServer, conn: socket.socket, request: Request) -> None:
    server.wait()


def _mid_body(server: RawServer, conn: socket.socket, request: Request, stall: bool) -> None:
    conn.sendall(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    if stall:
        server.wait()


def _not_http(server: RawServer, conn: socket.socket, request: Request) -> None:
    conn.sendall(f"HELLO {request.key} this is not HTTP\r\n\r\n".encode("latin-1"))


def _early_hints(server: RawServer, conn: socket.socket, request: Request) -> None:
    conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
    conn.sendall(_created(server))


def _drip(server: RawServer, conn: socket.socket, request: Request, status: bytes) -> None:
    conn.sendall(
        b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % (status, DRIP_LENGTH)
    )
    for _ in range(DRIP_LENGTH):
        if server.wait(DRIP):
            return
        conn.sendall(b" ")


def _bad_zone_429(server: RawServer, conn: socket.socket, request: Request, date: str) -> None:
    conn.sendall(
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: %s\r\nConnection: close\r\n"
        b"Content-Length: 0\r\n\r\n" % date.encode()
    )


def _bad_headers(server: RawServer, conn: socket.socket, request: Request) -> None:
    # A line without a colon ends what the parser accepts: the rest is "unparsed data",
    # which urllib3 would log verbatim.
    key = request.key.encode("latin-1")
    conn.sendall(_created(server, b"this line has no colon %s\r\nX-Echo: %s\r\n" % (key, key)))


def _ok_then(server: RawServer, conn: socket.socket, request: Request, stray: bool) -> None:
    conn.sendall(_created(server))
    if server.wait(0.05):
        return
    if stray:
        conn.sendall(_created(server))
    else:
        conn.shutdown(socket.SHUT_RDWR)
    server.done.set()


def _rate_limited(server: RawServer, conn: socket.socket, request: Request) -> None:
    conn.sendall(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0\r\nContent-Length: 0\r\n\r\n")


Behaviour = Callable[[RawServer, socket.socket, Request], None]
BEHAVIOURS: dict[str, Behaviour] = {
    "ok": _ok,
    "stall_silent": _stall_silent,
    "stall_mid_body": lambda s, c, r: _mid_body(s, c, r, stall=True),
    "close_mid_body": lambda s, c, r: _mid_body(s, c, r, stall=False),
    "not_http": _not_http,
    "early_hints": _early_hints,
    "drip_201": lambda s, c, r: _drip(s, c, r, b"201 Created"),
    "drip_503": lambda s, c, r: _drip(s, c, r, b"503 Service Unavailable"),
    "bad_zone_429": lambda s, c, r: _bad_zone_429(s, c, r, BAD_ZONE_DATES["bad_zone_429"]),
    "overflow_zone_429": lambda s, c, r: _bad_zone_429(
        s, c, r, BAD_ZONE_DATES["overflow_zone_429"]
    ),
    "bad_headers": _bad_headers,
    "ok_then_stray": lambda s, c, r: _ok_then(s, c, r, stray=True),
    "ok_then_close": lambda s, c, r: _ok_then(s, c, r, stray=False),
    "rate_limited": _rate_limited,
}


KEPT_OPEN = {
    "ok",
    "early_hints",
    "bad_headers",
    "ok_then_stray",
    "rate_limited",
}  # answers after which keep_alive goes on


@pytest.fixture
def raw_server() -> Iterator[Callable[..., RawServer]]:
    """Start RawServers for a test; all are stopped after it."""
    made: list[RawServer] = []

    def make(script: list[str], default: str = "ok", **kwargs: object) -> RawServer:
        made.append(RawServer(script, default, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for server in made:
        server.stop()


# -- a private certificate authority -----------------------------------------------------------


@attrs.frozen
class PrivateCA:
    ca_file: Path  # the CA's certificate: what a client trusts
    cert_file: Path  # the server's certificate for 127.0.0.1, signed by the CA
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context


def make_private_ca(directory: Path) -> PrivateCA:
    """A CA and a server certificate for IP 127.0.0.1 signed by it, made with openssl."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=px-tracker test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    (directory / "server.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    )
    return PrivateCA(directory / "ca.pem", directory / "server.pem", directory / "server.key")
