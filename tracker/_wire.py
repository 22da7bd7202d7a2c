"""One HTTP/1.1 exchange on a connection that is already open: the request written in
one piece, the answer read and framed here, every read ending by one deadline.

urllib3 opens each connection (TCP, the proxy tunnel, TLS and its verification) and makes
the first request on it; the requests after that, on the kept-alive connection, come
here. Through urllib3 and http.client an exchange costs about twice the CPU: a header
parser built on the email package, several buffered-reader layers, and more GIL hand-offs
per request, which a busy host app pays for (benchmarks/, host_app). What is read here is
only what a sender needs: the status, Retry-After, whether the connection may be kept,
and at most ``limit`` bytes of the body."""

from __future__ import annotations

import http.client
import time
import zlib
from typing import Any, Callable, Optional

from tracker._http import MAX_HEADER_LINES, MAX_INTERIM, shorten_timeout

MAX_LINE = 65536  # as http.client: a longer status or header line is refused
RECV_SIZE = 16384


class Head:
    """What the final answer's status line and header lines said."""

    __slots__ = (
        "chunked",
        "encoding",
        "keep_alive",
        "length",
        "malformed",
        "retry_after",
        "status",
    )

    def __init__(self, status: int) -> None:
        self.status = status
        self.retry_after: Optional[str] = None
        self.length: Optional[int] = None  # Content-Length, when it is one number
        self.chunked = False
        self.encoding = ""  # Content-Encoding, lower case
        self.keep_alive = True
        self.malformed = False  # lines no parser would take (never shown: server bytes)


class Reader:
    """Bytes from a socket, reads ending by ``deadline`` (time.monotonic()) together: a
    server that drips its answer cannot hold the sender past the request's timeout."""

    __slots__ = ("_buffer", "_deadline", "_sock", "_timeout", "eof")

    def __init__(self, sock: Any, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._timeout: Optional[float] = sock.gettimeout()
        self._buffer = b""
        self.eof = False

    def _fill(self) -> bool:
        """One more read; False at the end of the stream."""
        if self.eof:
            return False
        self._timeout = shorten_timeout(self._sock, self._deadline, self._timeout)
        data = self._sock.recv(RECV_SIZE)
        if not data:
            self.eof = True
            return False
        self._buffer = self._buffer + data if self._buffer else data
        return True

    def line(self) -> bytes:
        """The next line with its end (b"" at the end of the stream; the unfinished rest of
        the stream when it ends in a line)."""
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end >= 0:
                line, self._buffer = self._buffer[: end + 1], self._buffer[end + 1 :]
                if len(line) > MAX_LINE + 2:
                    raise http.client.LineTooLong("header line")
                return line
            if len(self._buffer) > MAX_LINE:
                raise http.client.LineTooLong("header line")
            start = len(self._buffer)
            if not self._fill():
                line, self._buffer = self._buffer, b""
                return line

    def take(self, size: int) -> bytes:
        """Exactly ``size`` bytes; IncompleteRead when the stream ends first."""
        while len(self._buffer) < size:
            if not self._fill():
                raise http.client.IncompleteRead(self._buffer, size - len(self._buffer))
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def rest(self, limit: int) -> tuple[bytes, bool]:
        """What comes until the stream ends, at most ``limit`` bytes; True when it ended."""
        while len(self._buffer) <= limit and self._fill():
            pass
        data, self._buffer = self._buffer[:limit], self._buffer[limit:]
        return data, self.eof and not self._buffer

    def pending(self) -> bool:
        """Whether bytes past the answer were read (a reused connection would be off)."""
        return bool(self._buffer)


def _status(line: bytes) -> tuple[str, int]:
    """The version and the status of a status line, as http.client reads it."""
    if len(line) > MAX_LINE:
        raise http.client.LineTooLong("status line")
    text = str(line, "iso-8859-1")
    parts = text.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise http.client.BadStatusLine(text)
    version, code = parts[0], parts[1]
    if not version.startswith("HTTP/1."):
        raise http.client.UnknownProtocol(version)
    if len(code) != 3 or not code.isdigit() or not code.isascii() or code[0] == "0":
        raise http.client.BadStatusLine(text)
    return version, int(code)


def _fields(reader: Reader, head: Head) -> dict[str, str]:
    """The header lines up to the blank one, by lower-case name (the first of repeated
    names, but Connection's and Transfer-Encoding's values are joined)."""
    fields: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES + 1):
        line = reader.line()
        if line in (b"\r\n", b"\n", b""):
            return fields
        if line[:1] in (b" ", b"\t"):
            head.malformed = True  # an obsolete folded line: nothing we read continues
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name or b" " in name or b"\t" in name:
            head.malformed = True  # "Name : value" included: RFC 9112 5.1 refuses it
            continue
        key = str(name, "iso-8859-1").lower()
        text = str(value.strip(), "iso-8859-1")
        if key not in fields:
            fields[key] = text
        elif key in ("connection", "transfer-encoding", "content-length"):
            fields[key] += "," + text
    raise http.client.HTTPException(f"got more than {MAX_HEADER_LINES} headers")


def read_head(reader: Reader) -> Head:
    """The final answer's head; interim (1xx) answers before it are skipped."""
    for _ in range(MAX_INTERIM):
        line = reader.line()
        if not line:
            raise http.client.RemoteDisconnected("Remote end closed connection without response")
        version, status = _status(line)
        head = Head(status)
        fields = _fields(reader, head)
        if 100 <= status < 200 and status != 101:
            continue
        break
    else:
        raise http.client.HTTPException("too many interim (1xx) answers")
    head.retry_after = fields.get("retry-after")
    head.encoding = fields.get("content-encoding", "").strip().lower()
    tokens = {t.strip().lower() for t in fields.get("connection", "").split(",")}
    head.keep_alive = "close" not in tokens and (version != "HTTP/1.0" or "keep-alive" in tokens)
    if status == 101:
        head.keep_alive = False
        head.length = 0
    elif status in (204, 304):
        head.length = 0
    elif "transfer-encoding" in fields:
        codings = [c.strip().lower() for c in fields["transfer-encoding"].split(",")]
        head.chunked = codings[-1] == "chunked"
        if not head.chunked or "content-length" in fields:
            # Framed by the end of the stream; or framed two ways, which RFC 9112 6.3
            # reads as chunked and says to close after.
            head.keep_alive = False
    else:
        lengths = {v.strip() for v in fields.get("content-length", "").split(",") if v.strip()}
        if len(lengths) == 1:
            (value,) = lengths
            if value.isdigit() and value.isascii():
                head.length = int(value)
        if head.length is None:
            head.keep_alive = False  # none, or not one number: read until the end
    return head


def _chunks(reader: Reader, limit: int) -> tuple[bytes, bool]:
    """A chunked body (at most ``limit`` bytes of it); True when it was read to its end."""
    parts: list[bytes] = []
    size_read = 0
    while True:
        line = reader.line()
        if not line.endswith(b"\n"):
            raise http.client.IncompleteRead(b"".join(parts))
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise http.client.HTTPException("bad chunk size line") from None
        if size < 0:
            raise http.client.HTTPException("bad chunk size line")
        if size == 0:
            break
        if size_read + size > limit:
            parts.append(reader.take(limit - size_read))
            return b"".join(parts), False
        parts.append(reader.take(size))
        size_read += size
        if reader.line() not in (b"\r\n", b"\n"):
            raise http.client.HTTPException("bad chunk end")
    for _ in range(MAX_HEADER_LINES + 1):  # trailer lines
        line = reader.line()
        if line in (b"\r\n", b"\n"):
            return b"".join(parts), True
        if not line:
            raise http.client.IncompleteRead(b"".join(parts))
    raise http.client.HTTPException(f"got more than {MAX_HEADER_LINES} trailer lines")


def read_body(reader: Reader, head: Head, limit: int) -> tuple[bytes, bool]:
    """The body, at most ``limit`` bytes, decoded; True when the connection may be reused
    (the body was read to its end, and the server keeps it open)."""
    if head.chunked:
        body, whole = _chunks(reader, limit)
    elif head.length is not None:
        body = reader.take(min(head.length, limit))
        whole = head.length <= limit
    else:
        body, _ = reader.rest(limit)
        whole = False
    # Not when a line no parser takes may have held what framed the answer, nor when the
    # stream ended (an answer cut at its head looks whole), nor with bytes past it.
    reuse = whole and head.keep_alive and not head.malformed
    reuse = reuse and not reader.eof and not reader.pending()
    return _decoded(body, head.encoding, limit), reuse


def _decoded(body: bytes, encoding: str, limit: int) -> bytes:
    """The body without its Content-Encoding: gzip and deflate are undone (we ask for
    neither); a body in another encoding says nothing we can read, so it is dropped."""
    if not body or encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip", "deflate"):
        wbits = 16 + zlib.MAX_WBITS if encoding != "deflate" else zlib.MAX_WBITS
        try:
            return zlib.decompressobj(wbits).decompress(body, limit)
        except zlib.error:
            return b""
    return b""


def exchange(
    sock: Any, request: bytes, timeout: float, written: Optional[Callable[[], None]]
) -> tuple[Reader, Head]:
    """Write ``request`` and read the head of its answer, all within ``timeout``.

    The socket's timeout is left at ``timeout`` between requests, so that it is set (an
    ioctl, and a GIL hand-off) only when a slow answer made the reader shorten it."""
    deadline = time.monotonic() + timeout
    if sock.gettimeout() != timeout:
        sock.settimeout(timeout)
    try:
        sock.sendall(request)
    except (BrokenPipeError, ConnectionResetError):
        # As urllib3: a server may answer and close before reading the whole request
        # (413, 401); its answer, when there is one, is read below.
        pass
    else:
        if written is not None:
            written()
    reader = Reader(sock, deadline)
    return reader, read_head(reader)
