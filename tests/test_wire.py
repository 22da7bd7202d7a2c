"""The exchange on a kept-alive connection (tracker/_wire.py): the first request on a
connection goes through urllib3, the later ones through our own reader. Whichever path
an answer comes by, it must end the same way; and the reader itself frames answers as
HTTP/1.1 says, bounded in lines, bytes and time."""

from __future__ import annotations

import gzip
import http.client
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any, Callable, Optional

import pytest

from tracker import _wire

from ._rawserver import RawServer
from ._support import API_KEY, FAST_RETRY, Recorder, recorded_tracker

RawServers = Callable[..., RawServer]

# -- the same answer, on a new connection and on a kept-alive one ----------------------------


def outcome(raw_server: RawServers, behaviours: list[str], warm: bool, **options: Any) -> Any:
    """Track one event answered by ``behaviours`` (then ok), on a new connection or, with
    ``warm``, on the connection an earlier event was delivered on; what came of it."""
    script = (["ok"] if warm else []) + behaviours
    server = raw_server(script, default="ok", keep_alive=warm)
    recorder = Recorder()
    with recorded_tracker(server.url, recorder, **FAST_RETRY, **options) as t:
        if warm:
            first = t.track("u", "warm-up")
            assert t.flush(timeout=10)
            assert recorder.delivered == [first]
            recorder.delivered.clear()
        event_id = t.track("u", "hostile")
        assert t.flush(timeout=15)
        stats = t.stats()
    seen = server.seen[1:] if warm else server.seen
    if warm:
        # The hostile answer came on the warm-up's connection: our reader read it.
        assert seen[0].connection == server.seen[0].connection
    errors = [(e.reason, e.status_code, e.attempts) for e in recorder.errors]
    messages = [e.message for e in recorder.errors]
    return (
        errors,
        recorder.delivered == [event_id],
        [s.behaviour for s in seen],
        (stats.retries, stats.rate_limited, stats.delivered - warm),
    ), messages


@pytest.mark.parametrize(
    ("behaviours", "options"),
    [
        (["not_http"], {"max_retries": 1}),
        (["early_hints", "early_hints"], {}),
        (["close_mid_body", "close_mid_body"], {}),
        (["drip_201"], {"timeout": 1.0}),
        (["drip_503"], {"timeout": 1.0}),
        (["bad_zone_429"], {}),
        (["overflow_zone_429"], {}),
        (["bad_headers"], {}),
    ],
)
def test_an_answer_ends_the_same_on_a_new_and_on_a_kept_alive_connection(
    raw_server: RawServers, behaviours: list[str], options: dict[str, Any]
) -> None:
    fresh, fresh_messages = outcome(raw_server, behaviours, warm=False, **options)
    warm, warm_messages = outcome(raw_server, behaviours, warm=True, **options)
    assert warm == fresh
    for message in fresh_messages + warm_messages:
        assert message is None or API_KEY not in message
    if behaviours == ["not_http"]:
        # Named alike on both paths, and redacted: the first line echoed the key.
        for message in fresh_messages + warm_messages:
            assert message is not None
            assert "BadStatusLine" in message
            assert "***" in message


def test_a_kept_alive_connection_carries_the_same_request_head(raw_server: RawServers) -> None:
    server = raw_server([], keep_alive=True)
    recorder = Recorder()
    with recorded_tracker(server.url, recorder) as t:
        for i in range(3):
            t.track("u", f"e{i}")
            assert t.flush(timeout=10)
    assert len(recorder.delivered) == 3
    assert {s.connection for s in server.seen} == {1}

    def lines(head: bytes) -> list[str]:
        # Content-Length differs with the body; its place and name must not.
        return [
            "content-length" if line.lower().startswith("content-length:") else line
            for line in head.decode("latin-1").split("\r\n")
        ]

    first, *later = (lines(s.head) for s in server.seen)
    assert all(head == first for head in later)
    assert first[0].startswith("POST /v1/events/custom HTTP/1.1")
    assert first[1] == f"Host: 127.0.0.1:{server.port}"
    assert "Accept-Encoding: identity" in first


# -- the reader, on a socket pair ---------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.settimeout(5.0)
    try:
        yield ours, theirs
    finally:
        ours.close()
        theirs.close()


def answer(
    pair: tuple[socket.socket, socket.socket],
    data: bytes,
    *,
    close: bool = False,
    limit: int = 1024,
    timeout: float = 5.0,
) -> tuple[_wire.Head, bytes, bool, bytes]:
    """``data`` as the answer to a request: the head, the body, whether the connection
    may be reused, and the request as the other end read it."""
    ours, theirs = pair
    theirs.sendall(data)
    if close:
        theirs.shutdown(socket.SHUT_WR)
    calls: list[float] = []
    reader, head = _wire.exchange(ours, b"REQUEST", timeout, lambda: calls.append(1))
    assert calls == [1]
    body, reuse = _wire.read_body(reader, head, limit)
    return head, body, reuse, theirs.recv(100)


def test_a_plain_answer_is_read_to_its_length_and_keeps_the_connection(pair: Any) -> None:
    head, body, reuse, request = answer(
        pair, b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nRETRY-after: 7\r\n\r\nhello"
    )
    assert (head.status, head.retry_after, body, reuse, request) == (
        201,
        "7",
        b"hello",
        True,
        b"REQUEST",
    )
    assert not head.malformed


@pytest.mark.parametrize(
    ("data", "reuse"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", False),  # bytes past it
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok", False),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\n\nok", False),  # bare LF; no length: until the end
    ],
)
def test_whether_the_connection_is_kept(pair: Any, data: bytes, reuse: bool) -> None:
    _head, body, kept, _ = answer(pair, data, close=not reuse)
    assert kept is reuse
    assert body in (b"ok", b"ok!", b"")


def test_a_chunked_body_with_extensions_and_trailers(pair: Any) -> None:
    head, body, reuse, _ = answer(
        pair,
        b"HTTP/1.1 429 Too Many\r\nTransfer-Encoding: gzip, chunked\r\nRetry-After: 2\r\n\r\n"
        b"4;ext=1\r\nwait\r\n6\r\n a bit\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
    # gzip listed as a transfer coding is not a content coding: the bytes are as sent.
    assert (head.status, head.retry_after, body, reuse) == (429, "2", b"wait a bit", True)


def test_a_body_past_the_limit_is_cut_and_the_connection_not_kept(pair: Any) -> None:
    _, body, reuse, _ = answer(
        pair, b"HTTP/1.1 500 E\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000, limit=100
    )
    assert (len(body), reuse) == (100, False)
    _head, body, reuse, _ = answer(
        pair,
        b"HTTP/1.1 500 E\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n" + b"y" * 4096,
        limit=100,
    )
    assert (len(body), reuse) == (100, False)


def test_interim_answers_are_skipped_up_to_a_bound(pair: Any) -> None:
    head, body, reuse, _ = answer(
        pair,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    )
    assert (head.status, body, reuse) == (201, b"", True)
    with pytest.raises(http.client.HTTPException, match="interim"):
        answer(pair, b"HTTP/1.1 102 Processing\r\n\r\n" * (_wire.MAX_INTERIM + 1))


@pytest.mark.parametrize(
    "first_line",
    [
        b"HELLO there\r\n",
        b"HTTP/1.1 20 OK\r\n",
        b"HTTP/1.1 099 Low\r\n",
        b"HTTP/1.1 2x1 Odd\r\n",
        b"HTTP/1.1\r\n",
    ],
)
def test_a_bad_status_line_is_named(pair: Any, first_line: bytes) -> None:
    with pytest.raises(http.client.BadStatusLine):
        answer(pair, first_line + b"Content-Length: 0\r\n\r\n")


def test_a_connection_closed_before_any_answer(pair: Any) -> None:
    with pytest.raises(http.client.RemoteDisconnected):
        answer(pair, b"", close=True)


def test_header_lines_no_parser_takes_are_noted_and_skipped(pair: Any) -> None:
    head, body, reuse, _ = answer(
        pair,
        b"HTTP/1.1 201 Created\r\nno colon here\r\n folded\r\nBad Name: x\r\n: empty\r\n"
        b"Content-Length: 2\r\n\r\nok",
    )
    assert (head.status, head.malformed, body, reuse) == (201, True, b"ok", True)


def test_too_many_or_too_long_header_lines_are_refused(pair: Any) -> None:
    with pytest.raises(http.client.HTTPException, match="more than 100 headers"):
        answer(pair, b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 101 + b"\r\n")
    # Sent by a thread: more than the socket pair's buffer holds.
    ours, theirs = pair
    long_line = b"HTTP/1.1 200 OK\r\nX-A: " + b"b" * 70000
    threading.Thread(target=theirs.sendall, args=(long_line,), daemon=True).start()
    with pytest.raises(http.client.LineTooLong):
        _wire.exchange(ours, b"REQUEST", 5.0, None)


def test_an_answer_that_drips_ends_at_the_deadline(pair: Any) -> None:
    ours, theirs = pair
    stop = threading.Event()

    def drip() -> None:
        theirs.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\n")
        while not stop.wait(0.05):
            theirs.sendall(b" ")

    threading.Thread(target=drip, daemon=True).start()
    started = time.monotonic()
    try:
        reader, head = _wire.exchange(ours, b"REQUEST", 0.5, None)
        assert head.status == 201
        with pytest.raises(socket.timeout):
            _wire.read_body(reader, head, 1024)
    finally:
        stop.set()
    assert 0.45 < time.monotonic() - started < 2.0


def test_a_body_cut_short_is_an_incomplete_read(pair: Any) -> None:
    with pytest.raises(http.client.IncompleteRead):
        answer(pair, b"HTTP/1.1 503 E\r\nContent-Length: 100\r\n\r\n{", close=True)


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        (b"gzip", gzip.compress),
        (b"deflate", zlib.compress),
        (b"br", lambda data: b"\x00not brotli"),
    ],
)
def test_a_compressed_body_is_read_or_dropped(
    pair: Any, encoding: bytes, encode: Callable[[bytes], bytes]
) -> None:
    data = encode(b'{"message":"quota"}')
    _head, body, reuse, _ = answer(
        pair,
        b"HTTP/1.1 400 Bad\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n%s"
        % (encoding, len(data), data),
    )
    expected: Optional[bytes] = None if encoding == b"br" else b'{"message":"quota"}'
    assert body == (expected or b"")
    assert reuse
